//! The pickle side of torch checkpoints, shared by both containers (the legacy stream in
//! `legacy_pth` and the zip archive in `zip_pth`): a self-contained, bounded unpickler that
//! interprets only what state dicts need, and the step from the pickled tensors to candle tensors.
//!
//! Reference: Python's `pickle` opcodes (Lib/pickletools.py), and torch/serialization.py
//! (`_legacy_load`, `_load`) for the persistent ids and tensor rebuild calls. candle's
//! `pickle::Stack` is not used: it reads Python 2 `OrderedDict`s (lpips' files) as empty, lacks
//! several opcodes, and deep-copies memo entries (a 1.6 KB file could make it allocate
//! gigabytes).
//!
//! Bounded work for bounded input, whatever the file holds:
//! - no recursion over pickled values: dropping a value is iterative (a tuple nested a million
//!   deep does not overflow the stack), and the one nested call (`_rebuild_from_type_v2`) is
//!   capped at [`MAX_REBUILD_NESTING`];
//! - every container item created or copied is charged to an item budget proportional to the
//!   pickle's size ([`item_budget`]), so memo references cannot multiply a small file
//!   (`OrderedDict(list)` a thousand times over one memoised list);
//! - a storage's declared size is checked against the bytes the container holds for it before
//!   anything is allocated; a tensor that is a row-major slice of its storage is a view of one
//!   shared candle tensor per storage (400 names aliasing one storage cost one storage), and only
//!   strided tensors are copied, against a copy budget of twice the file's size.
//!
//! Errors are one-line strings; `weights::WeightMap::load` adds the file.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

use super::weights::NESTED_STATE_DICT_KEYS;

/// How deep `_rebuild_from_type_v2` calls may nest (torch writes one level).
const MAX_REBUILD_NESTING: usize = 16;

/// Dimensions a tensor may have (torch allows 64).
const MAX_RANK: usize = 64;

/// Container items a pickle of `len` bytes may create or copy. Each item a pickle pushes costs
/// it at least one opcode byte; a state dict's items are copied at most a few times (a Python 2
/// `OrderedDict([...])` copies its list once), so 8 per byte is generous for real files while
/// keeping a hostile one linear in its size.
pub(crate) fn item_budget(len: usize) -> usize {
    len.saturating_mul(8).saturating_add(1 << 16)
}

/// Bytes of strided tensors that may be copied out of the storages of a file of `len` bytes.
pub(crate) fn copy_budget(len: u64) -> u64 {
    len.saturating_mul(2).saturating_add(1 << 20)
}

// ---- the pickled objects ----

/// A Python object as far as state dicts need one. Lists and dicts are shared (`Rc<RefCell>`)
/// as in Python, so that a memoised reference sees later `SETITEMS`/`APPENDS`.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    /// An int wider than 64 bits: its little-endian two's-complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A class or function named by `GLOBAL` (module, name).
    Global(Rc<(String, String)>),
    /// An instance of a class (or the result of a function) this reader does not interpret.
    Object(Rc<(String, String)>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

/// Iterative: the default drop recurses once per nesting level, and a pickle can nest a tuple a
/// million deep in 2 MB. A container this value holds the last reference to gives its items to a
/// work list instead, so each item's own drop finds its containers already empty.
impl Drop for Value {
    fn drop(&mut self) {
        let mut work = Vec::new();
        take_items(self, &mut work);
        while let Some(mut v) = work.pop() {
            take_items(&mut v, &mut work);
        }
    }
}

/// Moves the items of `v`'s container (when `v` holds its last reference) onto `work`.
fn take_items(v: &mut Value, work: &mut Vec<Value>) {
    match v {
        Value::Tuple(t) => {
            if let Some(items) = Rc::get_mut(t) {
                work.extend(items.iter_mut().map(|x| std::mem::replace(x, Value::None)));
            }
        }
        Value::List(l) => {
            if let Some(cell) = Rc::get_mut(l) {
                work.append(cell.get_mut());
            }
        }
        Value::Dict(d) => {
            if let Some(cell) = Rc::get_mut(d) {
                for (k, x) in cell.get_mut().drain(..) {
                    work.push(k);
                    work.push(x);
                }
            }
        }
        _ => {}
    }
}

impl Value {
    /// A short description for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::Mark => "a pickle mark".into(),
            Value::None => "None".into(),
            Value::Bool(b) => format!("the bool {b}"),
            Value::Int(i) => format!("the int {i}"),
            Value::BigInt(b) => format!("a {}-byte int", b.len()),
            Value::Float(f) => format!("the float {f}"),
            Value::Str(s) => format!("the string {s:?}"),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Tuple(t) => format!("a tuple of {} items", t.len()),
            Value::List(l) => format!("a list of {} items", l.borrow().len()),
            Value::Dict(d) => format!("a dict of {} items", d.borrow().len()),
            Value::Global(g) => format!("the class {}.{}", g.0, g.1),
            Value::Object(g) => format!("an object of class {}.{}", g.0, g.1),
            Value::Storage(s) => format!("a bare storage ({})", s.ty.name()),
            Value::Tensor(_) => "a tensor".into(),
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    fn as_usize(&self) -> Option<usize> {
        self.as_int().and_then(|i| usize::try_from(i).ok())
    }

    /// The items of a tuple or list (not charged to any budget: for the few fixed-place uses
    /// outside the unpickler, such as the storage key list).
    pub(crate) fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.to_vec()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    /// The number of items of a tuple or list (what copying them costs).
    fn item_count(&self) -> usize {
        match self {
            Value::Tuple(t) => t.len(),
            Value::List(l) => l.borrow().len(),
            _ => 0,
        }
    }

    /// `self[key]` for a dict with string keys (the last binding wins, as in Python).
    pub(crate) fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d.borrow().iter().rev().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone()),
            _ => None,
        }
    }
}

/// Element types of torch storages (`torch.FloatStorage`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StorageType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageType {
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// From a `torch.<dtype>` global (`_rebuild_tensor_v3`'s dtype argument).
    fn from_torch_dtype(name: &str) -> Option<Self> {
        Some(match name {
            "float64" | "double" => Self::F64,
            "float32" | "float" => Self::F32,
            "float16" | "half" => Self::F16,
            "bfloat16" => Self::BF16,
            "int64" | "long" => Self::I64,
            "int32" | "int" => Self::I32,
            "int16" | "short" => Self::I16,
            "int8" => Self::I8,
            "uint8" => Self::U8,
            "bool" => Self::Bool,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::F64 => "float64",
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I16 => "int16",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
        }
    }

    /// Bytes per element in the file.
    fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// The candle dtype a tensor of this type is loaded as: the same type where candle has it;
    /// int8 widens to i16 and bool becomes u8 (0/1), candle having neither.
    fn dtype(self) -> DType {
        match self {
            Self::F64 => DType::F64,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::I64 => DType::I64,
            Self::I32 => DType::I32,
            Self::I16 | Self::I8 => DType::I16,
            Self::U8 | Self::Bool => DType::U8,
        }
    }
}

/// A storage as a persistent id names it: a root storage `key`, or (files from torch < 0.4)
/// a view of `view.1 .. view.1 + view.2` elements of one.
#[derive(Debug)]
pub(crate) struct StorageRef {
    key: Rc<str>,
    ty: StorageType,
    view: Option<(usize, usize)>,
}

/// `torch._utils._rebuild_tensor*`'s arguments: element `offset`, `size` and `stride`, all in
/// elements of `ty`, into `storage`.
#[derive(Debug)]
pub(crate) struct TensorRef {
    storage: Rc<StorageRef>,
    ty: StorageType,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// What the file declares of each root storage on its first reference, as `_legacy_load`
/// allocates it: the element type (which sizes its data section) and count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Root {
    pub(crate) ty: StorageType,
    pub(crate) numel: u64,
}

impl Root {
    /// The bytes of this storage's data, if addressable.
    pub(crate) fn nbytes(&self) -> Option<usize> {
        self.numel.checked_mul(self.ty.size() as u64).and_then(|n| usize::try_from(n).ok())
    }
}

/// What the pickles of one file share: the root storages they declare (in first-reference
/// order, as the data is laid out), and what is left of the file's item budget.
#[derive(Debug)]
pub(crate) struct Roots {
    map: HashMap<Rc<str>, Root>,
    order: Vec<Rc<str>>,
    items_left: usize,
}

impl Roots {
    /// For the pickles of a file of `len` bytes (see [`item_budget`]).
    pub(crate) fn new(len: usize) -> Self {
        Self { map: HashMap::new(), order: Vec::new(), items_left: item_budget(len) }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Root> {
        self.map.get(key).copied()
    }

    /// Every root storage key, in the order the pickles first named them.
    pub(crate) fn keys(&self) -> &[Rc<str>] {
        &self.order
    }

    /// Charges `n` container items to the budget.
    fn charge(&mut self, n: usize) -> Result<(), String> {
        match self.items_left.checked_sub(n) {
            Some(left) => {
                self.items_left = left;
                Ok(())
            }
            None => Err("the pickle creates or copies more container items than a file of its size can \
                 hold (memo references repeated to multiply it?)"
                .to_string()),
        }
    }
}

// ---- the unpickler ----

/// A cursor over the whole file; its errors say where the file ended.
pub(crate) struct Reader<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => {
                Err(format!("truncated: the file ends at byte {} inside {what} (reading {n} bytes at byte {})", self.data.len(), self.pos))
            }
        }
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32_len(&mut self, what: &str) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.array(what)?) as usize)
    }

    fn u64_len(&mut self, what: &str) -> Result<usize, String> {
        usize::try_from(u64::from_le_bytes(self.array(what)?)).map_err(|_| format!("length too large in {what}"))
    }

    fn line(&mut self, what: &str) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("truncated: the file ends at byte {} inside {what}", self.data.len()))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
}

/// Decodes `n` little-endian two's-complement bytes (pickle's LONG1/LONG4).
fn long_value(b: &[u8]) -> Value {
    if b.len() > 8 {
        return Value::BigInt(Rc::from(b));
    }
    let negative = b.last().is_some_and(|&x| x & 0x80 != 0);
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

/// Python 2 `str` (BINSTRING/SHORT_BINSTRING): torch.load decodes it as UTF-8; fall back to
/// Latin-1, which cannot fail.
fn py2_str(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::Str(Rc::from(s)),
        Err(_) => Value::Str(b.iter().map(|&c| c as char).collect::<String>().into()),
    }
}

struct Unpickler<'r, 'a> {
    r: &'r mut Reader<'a>,
    roots: &'r mut Roots,
    stack: Vec<Value>,
    memo: HashMap<usize, Value>,
}

/// Reads one pickle (up to its STOP) from `r`.
pub(crate) fn unpickle(r: &mut Reader, roots: &mut Roots, what: &'static str) -> Result<Value, String> {
    let mut u = Unpickler { r, roots, stack: Vec::new(), memo: HashMap::new() };
    let ctx = format!("the {what} pickle");
    u.run(&ctx).map_err(|e| if e.starts_with("truncated") { e } else { format!("{e} in {ctx}") })
}

impl Unpickler<'_, '_> {
    fn run(&mut self, ctx: &str) -> Result<Value, String> {
        loop {
            let at = self.r.pos;
            let op = self.r.u8(ctx)?;
            match op {
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    self.roots.charge(1)?;
                    let top = self.top()?.clone();
                    self.stack.push(top);
                }
                0x80 => {
                    let proto = self.r.u8(ctx)?;
                    if proto > 5 {
                        return Err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    // FRAME: a length prefix only.
                    self.r.array::<8>(ctx)?;
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.r.array(ctx)?);
                    self.stack.push(Value::Int(v.into()))
                }
                b'K' => {
                    let v = self.r.u8(ctx)?;
                    self.stack.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.r.array(ctx)?);
                    self.stack.push(Value::Int(v.into()))
                }
                0x8a => {
                    let n = self.r.u8(ctx)? as usize;
                    let b = self.r.take(n, ctx)?;
                    self.stack.push(long_value(b))
                }
                0x8b => {
                    let n = self.r.u32_len(ctx)?;
                    let b = self.r.take(n, ctx)?;
                    self.stack.push(long_value(b))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.r.array(ctx)?);
                    self.stack.push(Value::Float(v))
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.r.u32_len(ctx)?,
                        0x8c => self.r.u8(ctx)? as usize,
                        _ => self.r.u64_len(ctx)?,
                    };
                    let b = self.r.take(n, ctx)?;
                    let s = std::str::from_utf8(b).map_err(|_| format!("invalid UTF-8 in a string at byte {at}"))?;
                    self.stack.push(Value::Str(Rc::from(s)))
                }
                b'U' | b'T' => {
                    let n = if op == b'U' {
                        self.r.u8(ctx)? as usize
                    } else {
                        let n = i32::from_le_bytes(self.r.array(ctx)?);
                        usize::try_from(n).map_err(|_| format!("negative length at byte {at}"))?
                    };
                    let b = self.r.take(n, ctx)?;
                    self.stack.push(py2_str(b))
                }
                b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'C' => self.r.u8(ctx)? as usize,
                        b'B' => self.r.u32_len(ctx)?,
                        _ => self.r.u64_len(ctx)?,
                    };
                    let b = self.r.take(n, ctx)?;
                    self.stack.push(Value::Bytes(Rc::from(b)))
                }
                b')' => self.stack.push(Value::Tuple(Rc::from(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::from(items)))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(format!("stack underflow at byte {at}"));
                    }
                    self.roots.charge(n)?;
                    let items = self.stack.split_off(self.stack.len() - n);
                    if items.iter().any(|v| matches!(v, Value::Mark)) {
                        return Err(format!("unexpected mark at byte {at}"));
                    }
                    self.stack.push(Value::Tuple(Rc::from(items)))
                }
                b']' | 0x8f => self.stack.push(Value::List(Rc::default())),
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))))
                }
                b'a' => {
                    self.roots.charge(1)?;
                    let v = self.pop()?;
                    self.extend_list(vec![v], at)?
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_list(items, at)?
                }
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items, at)?;
                    self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs))))
                }
                b's' => {
                    self.roots.charge(1)?;
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![(k, v)], at)?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items, at)?;
                    self.extend_dict(pairs, at)?
                }
                b'c' => {
                    let module = self.r.line(ctx)?;
                    let name = self.r.line(ctx)?;
                    self.stack.push(Value::Global(Rc::new((module, name))))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => self.stack.push(Value::Global(Rc::new((m.to_string(), n.to_string())))),
                        _ => return Err(format!("STACK_GLOBAL without strings at byte {at}")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.stack.push(v)
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let v = self.new_object(class, args)?;
                    self.stack.push(v)
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let v = self.new_object(class, args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    // BUILD sets attributes (`__setstate__`): nothing a state dict needs, and
                    // an OrderedDict's state is its `_metadata` attribute, not items.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v)
                }
                b'h' => {
                    let i = self.r.u8(ctx)? as usize;
                    self.memo_get(i, at)?
                }
                b'j' => {
                    let i = self.r.u32_len(ctx)?;
                    self.memo_get(i, at)?
                }
                b'q' => {
                    let i = self.r.u8(ctx)? as usize;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = self.r.u32_len(ctx)?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len();
                    self.memo_put(i)?
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {at}")),
            }
        }
    }

    fn pop(&mut self) -> Result<Value, String> {
        match self.stack.pop() {
            Some(Value::Mark) | None => Err(format!("malformed pickle: stack underflow at byte {}", self.r.pos - 1)),
            Some(v) => Ok(v),
        }
    }

    fn top(&self) -> Result<&Value, String> {
        match self.stack.last() {
            Some(Value::Mark) | None => Err(format!("malformed pickle: stack underflow at byte {}", self.r.pos - 1)),
            Some(v) => Ok(v),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let i = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| format!("malformed pickle: no mark at byte {}", self.r.pos - 1))?;
        let items = self.stack.split_off(i + 1);
        self.stack.pop();
        self.roots.charge(items.len())?;
        Ok(items)
    }

    fn memo_get(&mut self, i: usize, at: usize) -> Result<(), String> {
        let v = self.memo.get(&i).ok_or_else(|| format!("malformed pickle: memo {i} unset at byte {at}"))?.clone();
        self.stack.push(v);
        Ok(())
    }

    fn memo_put(&mut self, i: usize) -> Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn extend_list(&mut self, items: Vec<Value>, at: usize) -> Result<(), String> {
        match self.top()? {
            Value::List(l) => l.borrow_mut().extend(items),
            // A list subclass we do not interpret: its items are not needed.
            Value::Object(_) => {}
            other => return Err(format!("APPEND to {} at byte {at}", other.describe())),
        }
        Ok(())
    }

    fn extend_dict(&mut self, pairs: Vec<(Value, Value)>, at: usize) -> Result<(), String> {
        match self.top()? {
            Value::Dict(d) => d.borrow_mut().extend(pairs),
            Value::Object(_) => {}
            other => return Err(format!("SETITEM on {} at byte {at}", other.describe())),
        }
        Ok(())
    }

    /// `cls.__new__(cls, *args)` (NEWOBJ).
    fn new_object(&mut self, class: Value, _args: Value) -> Result<Value, String> {
        match &class {
            Value::Global(g) if is_dict_class(g) => Ok(Value::Dict(Rc::default())),
            Value::Global(g) => Ok(Value::Object(g.clone())),
            other => Err(format!("NEWOBJ of {}", other.describe())),
        }
    }

    /// The items of a tuple or list, charged to the file's item budget.
    fn items(&mut self, v: &Value) -> Result<Option<Vec<Value>>, String> {
        self.roots.charge(v.item_count())?;
        Ok(v.items())
    }

    /// A tuple or list of non-negative ints (sizes, strides).
    fn usizes(&mut self, v: &Value) -> Result<Option<Vec<usize>>, String> {
        Ok(self.items(v)?.and_then(|items| items.iter().map(Value::as_usize).collect()))
    }

    /// `callable(*args)` (REDUCE), for the callables state dicts use; any other class or
    /// function yields an opaque object.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value, String> {
        let (mut callable, mut args) = (callable, args);
        // `_rebuild_from_type_v2(func, new_type, args, state)` (a tensor subclass) calls `func`
        // on `args`: a loop, not a recursion, and capped, since a list can contain itself.
        for _ in 0..MAX_REBUILD_NESTING {
            let g = match &callable {
                Value::Global(g) => g.clone(),
                other => return Err(format!("call of {}", other.describe())),
            };
            let items = self.items(&args)?.ok_or_else(|| format!("{}.{} called with {}", g.0, g.1, args.describe()))?;
            if matches!((g.0.as_str(), g.1.as_str()), ("torch._tensor" | "torch.tensor", "_rebuild_from_type_v2")) {
                match &items[..] {
                    [func, _, inner, ..] => {
                        (callable, args) = (func.clone(), inner.clone());
                        continue;
                    }
                    _ => return Err(format!("{}.{} called with unexpected arguments", g.0, g.1)),
                }
            }
            return self.call_one(&g, items);
        }
        Err(format!("_rebuild_from_type_v2 nested more than {MAX_REBUILD_NESTING} deep"))
    }

    fn call_one(&mut self, g: &Rc<(String, String)>, args: Vec<Value>) -> Result<Value, String> {
        let bad_args = || format!("{}.{} called with unexpected arguments", g.0, g.1);
        match (g.0.as_str(), g.1.as_str()) {
            _ if is_dict_class(g) => {
                // OrderedDict(): Python 3 adds the items with SETITEMS; Python 2 passed them
                // as a list of [key, value] pairs.
                let mut items = Vec::new();
                if let Some(list @ (Value::List(_) | Value::Tuple(_))) = args.first() {
                    for pair in self.items(list)?.unwrap_or_default() {
                        match self.items(&pair)?.as_deref() {
                            Some([k, v]) => items.push((k.clone(), v.clone())),
                            _ => return Err(bad_args()),
                        }
                    }
                }
                Ok(Value::Dict(Rc::new(RefCell::new(items))))
            }
            ("torch._utils", "_rebuild_tensor") | ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor_v3") => {
                let (storage, offset, size, stride) = match &args[..] {
                    [Value::Storage(s), offset, size, stride, ..] => (
                        s.clone(),
                        offset.as_usize().ok_or_else(bad_args)?,
                        self.usizes(size)?.ok_or_else(bad_args)?,
                        self.usizes(stride)?.ok_or_else(bad_args)?,
                    ),
                    _ => return Err(bad_args()),
                };
                if size.len() != stride.len() {
                    return Err(bad_args());
                }
                if size.len() > MAX_RANK {
                    return Err(format!("a tensor of {} dimensions (torch allows {MAX_RANK})", size.len()));
                }
                let ty = if g.1 == "_rebuild_tensor_v3" {
                    match args.get(6) {
                        Some(Value::Global(d)) if d.0 == "torch" => {
                            StorageType::from_torch_dtype(&d.1).ok_or_else(|| format!("unsupported tensor dtype torch.{}", d.1))?
                        }
                        _ => return Err(bad_args()),
                    }
                } else {
                    storage.ty
                };
                Ok(Value::Tensor(Rc::new(TensorRef { storage, ty, offset, size, stride })))
            }
            ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(bad_args()),
            },
            ("torch", "Size") => Ok(args.first().cloned().ok_or_else(bad_args)?),
            ("_codecs", "encode") => match &args[..] {
                // Python 3 bytes pickled at protocol 2: encode(latin-1 text, "latin1").
                [Value::Str(s), ..] => Ok(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect::<Vec<u8>>().into())),
                _ => Err(bad_args()),
            },
            _ => Ok(Value::Object(g.clone())),
        }
    }

    /// A storage's persistent id: `('storage', storage_type, root_key, location, numel,
    /// view_metadata)` in legacy files, the same without `view_metadata` in zip files; also
    /// `('module', ...)` for pickled nn.Module classes (whole models), kept opaque.
    fn persistent_load(&mut self, pid: Value) -> Result<Value, String> {
        let items = self.items(&pid)?.ok_or_else(|| format!("persistent id {} is not a tuple", pid.describe()))?;
        match items.first().and_then(Value::as_str) {
            Some("storage") => {}
            Some("module") => {
                return Ok(match items.get(1) {
                    Some(Value::Global(g)) => Value::Global(g.clone()),
                    _ => Value::Object(Rc::new(("torch.nn".into(), "Module".into()))),
                })
            }
            _ => return Err(format!("unknown persistent id {} (expected a storage)", items.first().map_or("()".into(), Value::describe))),
        }
        let bad = || format!("malformed storage id ({} items)", items.len());
        let (class, key, numel, view) = match &items[..] {
            [_, Value::Global(class), key, _location, numel, rest @ ..] if rest.len() <= 1 => {
                (class, key.as_str().ok_or_else(bad)?, numel.as_int().and_then(|n| u64::try_from(n).ok()).ok_or_else(bad)?, rest.first())
            }
            _ => return Err(bad()),
        };
        let ty = StorageType::from_storage_class(&class.1)
            .filter(|_| class.0.starts_with("torch"))
            .ok_or_else(|| format!("unsupported storage type {}.{}", class.0, class.1))?;
        let key: Rc<str> = Rc::from(key);
        let root = match self.roots.map.get(&key) {
            Some(root) => *root,
            None => {
                self.roots.order.push(key.clone());
                *self.roots.map.entry(key.clone()).or_insert(Root { ty, numel })
            }
        };
        // A storage reinterpreted with another dtype keeps its bytes (as `_legacy_load` does
        // when the byte counts agree).
        let nbytes = |n: u64, t: StorageType| u128::from(n) * t.size() as u128;
        if root.ty != ty && nbytes(root.numel, root.ty) != nbytes(numel, ty) {
            return Err(format!("storage \"{key}\" is used as both {} and {}", root.ty.name(), ty.name()));
        }
        let view = match view {
            None | Some(Value::None) => None,
            Some(v) => match self.items(v)?.as_deref() {
                // (view_key, offset, size): elements [offset, offset + size) of the root.
                Some([_, offset, size]) => Some((offset.as_usize().ok_or_else(bad)?, size.as_usize().ok_or_else(bad)?)),
                _ => return Err(bad()),
            },
        };
        Ok(Value::Storage(Rc::new(StorageRef { key, ty, view })))
    }
}

fn is_dict_class(g: &(String, String)) -> bool {
    matches!(
        (g.0.as_str(), g.1.as_str()),
        ("collections", "OrderedDict") | ("collections", "defaultdict") | ("builtins", "dict") | ("__builtin__", "dict")
    )
}

fn pairs(items: Vec<Value>, at: usize) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(format!("malformed pickle: odd number of dict items at byte {at}"));
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

// ---- from the pickled object to tensors ----

/// The tensors of the state dict: the top-level dict's, or else those of a dict nested under one
/// of [`NESTED_STATE_DICT_KEYS`]. Non-tensor entries are skipped, as in the zip path.
fn state_dict_entries(top: &Value) -> Result<Vec<(String, Rc<TensorRef>)>, String> {
    let Value::Dict(d) = top else {
        let hint = match top {
            Value::Object(_) | Value::Global(_) => " (a whole pickled model?)",
            _ => "",
        };
        return Err(format!(
            "the saved object is {}{hint}, not a dict; expected a state_dict saved with \
             torch.save(model.state_dict(), path)",
            top.describe()
        ));
    };
    let found = tensors_of(top)?;
    if !found.is_empty() {
        return Ok(found);
    }
    for key in NESTED_STATE_DICT_KEYS {
        if let Some(nested @ Value::Dict(_)) = top.get(key) {
            let found = tensors_of(&nested)?;
            if !found.is_empty() {
                return Ok(found);
            }
        }
    }
    let keys: Vec<String> = d.borrow().iter().take(8).map(|(k, _)| k.as_str().map_or_else(|| k.describe(), |s| format!("{s:?}"))).collect();
    let more = if d.borrow().len() > 8 { ", ..." } else { "" };
    Err(format!(
        "no tensors found in the saved dict (keys: [{}{more}]); expected a state_dict saved with \
         torch.save(model.state_dict(), path)",
        keys.join(", ")
    ))
}

fn tensors_of(dict: &Value) -> Result<Vec<(String, Rc<TensorRef>)>, String> {
    let Value::Dict(d) = dict else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (k, v) in d.borrow().iter() {
        let Some(name) = k.as_str() else { continue };
        match v {
            Value::Tensor(t) => out.push((name.to_string(), t.clone())),
            // A tensor built by a torch function this reader does not know (quantized,
            // sparse, ...): refuse rather than silently drop a weight.
            Value::Object(g) if g.0.starts_with("torch") && g.1.starts_with("_rebuild") => {
                return Err(format!("tensor \"{name}\" is built by {}.{}, which is not supported", g.0, g.1))
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Turns the pickled tensors into candle tensors on one device. A tensor that is a row-major run
/// of its storage is a view (`narrow` + `reshape`) of one candle tensor per storage and element
/// type, converted and moved once, so names aliasing one storage share its memory, as in torch.
/// Other (strided) tensors are copied, against the copy budget.
pub(crate) struct TensorBuilder<'d> {
    /// The bytes of each root storage, exactly its declared size.
    data: &'d HashMap<Rc<str>, &'d [u8]>,
    device: &'d Device,
    /// Whether floating-point tensors become f32 (what the models compute in).
    float_to_f32: bool,
    shared: HashMap<(Rc<str>, StorageType), Tensor>,
    copy_total: u64,
    copy_left: u64,
}

impl<'d> TensorBuilder<'d> {
    /// `file_len` sizes the copy budget (see [`copy_budget`]).
    pub(crate) fn new(data: &'d HashMap<Rc<str>, &'d [u8]>, device: &'d Device, float_to_f32: bool, file_len: u64) -> Self {
        Self { data, device, float_to_f32, shared: HashMap::new(), copy_total: copy_budget(file_len), copy_left: copy_budget(file_len) }
    }

    /// Every tensor of the state dict in `top`, in file order.
    pub(crate) fn state_dict(&mut self, top: &Value) -> Result<Vec<(String, Tensor)>, String> {
        state_dict_entries(top)?
            .into_iter()
            .map(|(name, t)| {
                let tensor = self.tensor(&t).map_err(|cause| format!("tensor \"{name}\": {cause}"))?;
                Ok((name, tensor))
            })
            .collect()
    }

    fn tensor(&mut self, t: &TensorRef) -> Result<Tensor, String> {
        let s = &t.storage;
        let root: &[u8] =
            self.data.get(&s.key).ok_or_else(|| format!("its storage \"{}\" has no data in the file; corrupt file?", s.key))?;
        // Byte range of the storage (view) the tensor indexes into.
        let (view_start, view_end) = match s.view {
            None => (0, root.len()),
            Some((offset, size)) => {
                let es = s.ty.size();
                let range = offset.checked_mul(es).zip(offset.checked_add(size).and_then(|e| e.checked_mul(es)));
                match range {
                    Some((a, b)) if b <= root.len() => (a, b),
                    _ => return Err(format!("storage view [{offset}, {offset}+{size}) exceeds its storage \"{}\"", s.key)),
                }
            }
        };
        let es = t.ty.size();
        let storage_len = (view_end - view_start) / es;
        let numel = t.size.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or("size overflows")?;
        let dtype = self.out_dtype(t.ty);
        if numel == 0 {
            return Tensor::zeros(t.size.as_slice(), dtype, self.device).map_err(|e| e.to_string());
        }
        let last =
            t.size.iter().zip(&t.stride).try_fold(t.offset, |acc, (&d, &st)| (d - 1).checked_mul(st).and_then(|x| acc.checked_add(x)));
        if !matches!(last, Some(l) if l < storage_len) {
            return Err(format!(
                "size {:?}, stride {:?} and offset {} reach past the end of its storage of {} \
                 {} elements",
                t.size,
                t.stride,
                t.offset,
                storage_len,
                t.ty.name()
            ));
        }
        if is_row_major(&t.size, &t.stride) {
            // Elements [start, start + numel) of the root, read as `t.ty`.
            let start_byte = view_start + t.offset * es;
            if start_byte.is_multiple_of(es) && root.len().is_multiple_of(es) {
                let whole = self.shared_storage(&s.key, t.ty, root)?;
                return whole.narrow(0, start_byte / es, numel).and_then(|v| v.reshape(t.size.as_slice())).map_err(|e| e.to_string());
            }
        }
        let out_len = numel.checked_mul(es).ok_or("size overflows")?;
        // Charged before allocating: stride 0 lets a one-element storage declare a terabyte.
        match self.copy_left.checked_sub(out_len as u64) {
            Some(left) => self.copy_left = left,
            None => {
                return Err(format!(
                    "copying its {numel} strided elements would take the strided copies of this \
                     file past {} bytes (twice its size, plus 1 MiB)",
                    self.copy_total
                ))
            }
        }
        let bytes = &root[view_start..view_end];
        let mut out: Vec<u8> = Vec::with_capacity(out_len);
        let rank = t.size.len();
        let mut idx = vec![0usize; rank];
        for _ in 0..numel {
            let e = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&bytes[e * es..(e + 1) * es]);
            for d in (0..rank).rev() {
                idx[d] += 1;
                if idx[d] < t.size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        self.finish(&out, t.ty, &t.size)
    }

    /// The whole root storage `key` as a 1-d tensor of `ty`, made once.
    fn shared_storage(&mut self, key: &Rc<str>, ty: StorageType, root: &[u8]) -> Result<Tensor, String> {
        if let Some(t) = self.shared.get(&(key.clone(), ty)) {
            return Ok(t.clone());
        }
        let t = self.finish(root, ty, &[root.len() / ty.size()])?;
        self.shared.insert((key.clone(), ty), t.clone());
        Ok(t)
    }

    /// The candle dtype a tensor of `ty` ends up as.
    fn out_dtype(&self, ty: StorageType) -> DType {
        match ty.dtype() {
            DType::F16 | DType::BF16 | DType::F64 if self.float_to_f32 => DType::F32,
            d => d,
        }
    }

    /// Row-major little-endian elements of `ty` as a tensor of `shape` on the device.
    fn finish(&self, bytes: &[u8], ty: StorageType, shape: &[usize]) -> Result<Tensor, String> {
        let widened: Vec<u8>;
        let bytes = match ty {
            // candle has no i8: widen to i16.
            StorageType::I8 => {
                widened = bytes.iter().flat_map(|&b| i16::from(b as i8).to_le_bytes()).collect();
                &widened[..]
            }
            StorageType::Bool => {
                widened = bytes.iter().map(|&b| u8::from(b != 0)).collect();
                &widened[..]
            }
            _ => bytes,
        };
        let host = Tensor::from_raw_buffer(bytes, ty.dtype(), shape, &Device::Cpu).map_err(|e| e.to_string())?;
        let dtype = self.out_dtype(ty);
        let t = if dtype != host.dtype() { host.to_dtype(dtype).map_err(|e| e.to_string())? } else { host };
        t.to_device(self.device).map_err(|e| e.to_string())
    }
}

/// Whether `stride` is the row-major (C-contiguous) stride of `size` (size-1 dims ignored).
fn is_row_major(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&d, &s) in size.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_sign_extend() {
        assert!(matches!(long_value(&[0xff]), Value::Int(-1)));
        assert!(matches!(long_value(&[0x00, 0x01]), Value::Int(256)));
        assert!(matches!(long_value(&[]), Value::Int(0)));
        assert!(matches!(long_value(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]), Value::BigInt(_)));
    }

    #[test]
    fn row_major_ignores_unit_dims() {
        assert!(is_row_major(&[2, 3], &[3, 1]));
        assert!(is_row_major(&[1, 64, 1, 1], &[64, 1, 1, 1]));
        assert!(is_row_major(&[1, 4], &[99, 1]));
        assert!(!is_row_major(&[2, 3], &[1, 2]));
        assert!(is_row_major(&[], &[]));
    }
}
