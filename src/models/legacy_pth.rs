//! Legacy (pre-zip) torch checkpoints: what `torch.save` wrote before torch 1.6, and still writes
//! with `_use_new_zipfile_serialization=False`. pytorch-fid's `pt_inception-2015-12-05-*.pth`,
//! lpips' `weights/v0.1/{alex,vgg}.pth` and torchvision's older model files use it.
//!
//! Reference: `_legacy_save` / `_legacy_load` in torch/serialization.py. The file is a sequence
//! of pickles (protocol 2) followed by raw storage data:
//!
//! 1. the magic number `0x1950a86a20f9469cfc6c`;
//! 2. the protocol version, 1001;
//! 3. `sys_info`: byte order and C type sizes;
//! 4. the saved object, where a tensor is a call of `torch._utils._rebuild_tensor_v2(storage,
//!    offset, size, stride, requires_grad, hooks)` and a storage is the persistent id
//!    `("storage", torch.FloatStorage, key, location, numel, view)`;
//! 5. the list of storage keys;
//! 6. for each key in that order: its element count (i64) and its little-endian data.
//!
//! The unpickler here is self-contained rather than candle's `pickle::Stack`: that one reads
//! Python 2 `OrderedDict`s (lpips' files) as empty, panics on the 10-byte magic number in debug
//! builds, and lacks several opcodes. It interprets only what state dicts need: containers,
//! scalars, strings, the tensor/storage rebuild calls and `OrderedDict`; any other class becomes
//! an opaque object, so that the non-tensor parts of a training checkpoint do not stop a load.
//! Errors are one-line strings; [`super::weights::WeightMap::load`] adds the file.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

use super::weights::NESTED_STATE_DICT_KEYS;

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c), little-endian as pickle's LONG1
/// stores it.
const MAGIC_NUMBER: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i64 = 1001;

/// Every tensor of a legacy checkpoint (`bytes` is the whole file), in file order, on the CPU,
/// each in its storage's dtype (see [`StorageType::dtype`]). A state_dict nested under one of
/// [`NESTED_STATE_DICT_KEYS`] is found as in the zip path.
pub(crate) fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let mut r = Reader { data: bytes, pos: 0 };
    let mut roots = Roots::new();

    let magic = unpickle(&mut r, &mut roots, "magic number")?;
    if !matches!(&magic, Value::BigInt(b) if b[..] == MAGIC_NUMBER[..]) {
        return Err(format!("first pickle is {}, not torch's magic number; not a torch checkpoint", magic.describe()));
    }
    let version = unpickle(&mut r, &mut roots, "protocol version")?;
    if !matches!(version, Value::Int(PROTOCOL_VERSION)) {
        return Err(format!("protocol version is {}, expected {PROTOCOL_VERSION}", version.describe()));
    }
    let sys_info = unpickle(&mut r, &mut roots, "sys_info")?;
    if let Some(Value::Bool(false)) = sys_info.get("little_endian") {
        return Err("big-endian checkpoint is not supported".to_string());
    }
    let top = unpickle(&mut r, &mut roots, "saved object")?;
    let keys = unpickle(&mut r, &mut roots, "storage key list")?;
    let keys = keys.items().ok_or_else(|| format!("storage key list is {}, not a list", keys.describe()))?;

    // The storages' data, in the order of the key list.
    let mut data: HashMap<Rc<str>, &[u8]> = HashMap::with_capacity(keys.len());
    for key in keys {
        let key = key.as_str().ok_or_else(|| format!("storage key {} is not a string", key.describe()))?;
        let root = roots.get(key).ok_or_else(|| format!("storage \"{key}\" is listed but no tensor refers to it; corrupt file?"))?;
        let what = format!("the data of storage \"{key}\"");
        let count = i64::from_le_bytes(r.array(&what)?);
        if u64::try_from(count).ok() != Some(root.numel) {
            return Err(format!(
                "storage \"{key}\" has {count} elements in the data section but {} in the \
                 pickle; corrupt file?",
                root.numel
            ));
        }
        let nbytes = root
            .numel
            .checked_mul(root.ty.size() as u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("storage \"{key}\" is too large"))?;
        data.insert(Rc::from(key), r.take(nbytes, &what)?);
    }

    state_dict_entries(&top)?
        .into_iter()
        .map(|(name, t)| {
            let tensor = materialize(&t, &data).map_err(|cause| format!("tensor \"{name}\": {cause}"))?;
            Ok((name, tensor))
        })
        .collect()
}

// ---- the pickled objects ----

/// A Python object as far as state dicts need one. Lists and dicts are shared (`Rc<RefCell>`)
/// as in Python, so that a memoised reference sees later `SETITEMS`/`APPENDS`.
#[derive(Debug, Clone)]
enum Value {
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

impl Value {
    /// A short description for error messages.
    fn describe(&self) -> String {
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

    fn as_str(&self) -> Option<&str> {
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

    /// The items of a tuple or list.
    fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.to_vec()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    /// A tuple or list of non-negative ints (sizes, strides).
    fn as_usizes(&self) -> Option<Vec<usize>> {
        self.items()?.iter().map(Value::as_usize).collect()
    }

    /// `self[key]` for a dict with string keys (the last binding wins, as in Python).
    fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d.borrow().iter().rev().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone()),
            _ => None,
        }
    }
}

/// Element types of torch storages (`torch.FloatStorage`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageType {
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

    fn name(self) -> &'static str {
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
struct StorageRef {
    key: Rc<str>,
    ty: StorageType,
    view: Option<(usize, usize)>,
}

/// `torch._utils._rebuild_tensor*`'s arguments: element `offset`, `size` and `stride`, all in
/// elements of `ty`, into `storage`.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    ty: StorageType,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// What the file declares of each root storage on its first reference, as `_legacy_load`
/// allocates it: the element type (which sizes its data section) and count.
#[derive(Debug, Clone, Copy)]
struct Root {
    ty: StorageType,
    numel: u64,
}

#[derive(Debug, Default)]
struct Roots(HashMap<Rc<str>, Root>);

impl Roots {
    fn new() -> Self {
        Self::default()
    }

    fn get(&self, key: &str) -> Option<Root> {
        self.0.get(key).copied()
    }
}

// ---- the unpickler ----

/// A cursor over the whole file; its errors say where the file ended.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
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

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
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
fn unpickle(r: &mut Reader, roots: &mut Roots, what: &'static str) -> Result<Value, String> {
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
        match class {
            Value::Global(g) if is_dict_class(&g) => Ok(Value::Dict(Rc::default())),
            Value::Global(g) => Ok(Value::Object(g)),
            other => Err(format!("NEWOBJ of {}", other.describe())),
        }
    }

    /// `callable(*args)` (REDUCE), for the callables state dicts use; any other class or
    /// function yields an opaque object.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value, String> {
        let g = match callable {
            Value::Global(g) => g,
            other => return Err(format!("call of {}", other.describe())),
        };
        let args = args.items().ok_or_else(|| format!("{}.{} called with {}", g.0, g.1, args.describe()))?;
        let bad_args = || format!("{}.{} called with unexpected arguments", g.0, g.1);
        match (g.0.as_str(), g.1.as_str()) {
            _ if is_dict_class(&g) => {
                // OrderedDict(): Python 3 adds the items with SETITEMS; Python 2 passed them
                // as a list of [key, value] pairs.
                let mut items = Vec::new();
                if let Some(Value::List(_) | Value::Tuple(_)) = args.first() {
                    for pair in args[0].items().unwrap_or_default() {
                        match pair.items().as_deref() {
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
                        size.as_usizes().ok_or_else(bad_args)?,
                        stride.as_usizes().ok_or_else(bad_args)?,
                    ),
                    _ => return Err(bad_args()),
                };
                if size.len() != stride.len() {
                    return Err(bad_args());
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
            ("torch._tensor", "_rebuild_from_type_v2") | ("torch.tensor", "_rebuild_from_type_v2") => {
                // (func, new_type, args, state): a tensor subclass; keep the tensor.
                match &args[..] {
                    [func, _, inner, ..] => self.call(func.clone(), inner.clone()),
                    _ => Err(bad_args()),
                }
            }
            ("torch", "Size") => Ok(args.first().cloned().ok_or_else(bad_args)?),
            ("_codecs", "encode") => match &args[..] {
                // Python 3 bytes pickled at protocol 2: encode(latin-1 text, "latin1").
                [Value::Str(s), ..] => Ok(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect::<Vec<u8>>().into())),
                _ => Err(bad_args()),
            },
            _ => Ok(Value::Object(g)),
        }
    }

    /// `('storage', storage_type, root_key, location, numel, view_metadata)`; also
    /// `('module', ...)` for pickled nn.Module classes (whole models), kept opaque.
    fn persistent_load(&mut self, pid: Value) -> Result<Value, String> {
        let items = pid.items().ok_or_else(|| format!("persistent id {} is not a tuple", pid.describe()))?;
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
            [_, Value::Global(class), key, _location, numel, view] => {
                (class, key.as_str().ok_or_else(bad)?, numel.as_int().and_then(|n| u64::try_from(n).ok()).ok_or_else(bad)?, view)
            }
            _ => return Err(bad()),
        };
        let ty = StorageType::from_storage_class(&class.1)
            .filter(|_| class.0.starts_with("torch"))
            .ok_or_else(|| format!("unsupported storage type {}.{}", class.0, class.1))?;
        let key: Rc<str> = Rc::from(key);
        let root = *self.roots.0.entry(key.clone()).or_insert(Root { ty, numel });
        // A storage reinterpreted with another dtype keeps its bytes (as `_legacy_load` does
        // when the byte counts agree).
        let nbytes = |n: u64, t: StorageType| u128::from(n) * t.size() as u128;
        if root.ty != ty && nbytes(root.numel, root.ty) != nbytes(numel, ty) {
            return Err(format!("storage \"{key}\" is used as both {} and {}", root.ty.name(), ty.name()));
        }
        let view = match view {
            Value::None => None,
            v => match v.items().as_deref() {
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
    let Value::Dict(_) = top else {
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
    let Value::Dict(d) = top else { unreachable!() };
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

/// Copies a tensor's elements out of its storage's bytes, in row-major order, into a CPU tensor.
fn materialize(t: &TensorRef, data: &HashMap<Rc<str>, &[u8]>) -> Result<Tensor, String> {
    let s = &t.storage;
    let mut bytes: &[u8] = data.get(&s.key).ok_or_else(|| format!("its storage \"{}\" has no data in the file; corrupt file?", s.key))?;
    if let Some((offset, size)) = s.view {
        let es = s.ty.size();
        let range = offset.checked_mul(es).zip(offset.checked_add(size).and_then(|e| e.checked_mul(es)));
        bytes = match range {
            Some((a, b)) if b <= bytes.len() => &bytes[a..b],
            _ => return Err(format!("storage view [{offset}, {offset}+{size}) exceeds its storage \"{}\"", s.key)),
        };
    }
    let es = t.ty.size();
    let storage_len = bytes.len() / es;
    let numel = t.size.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or("size overflows")?;
    let out_len = numel.checked_mul(es).ok_or("size overflows")?;
    let mut out: Vec<u8> = Vec::with_capacity(out_len);
    if numel > 0 {
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
            out.extend_from_slice(&bytes[t.offset * es..(t.offset + numel) * es]);
        } else {
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
        }
    }
    let out = match t.ty {
        // candle has no i8: widen to i16.
        StorageType::I8 => out.iter().flat_map(|&b| i16::from(b as i8).to_le_bytes()).collect(),
        StorageType::Bool => out.iter().map(|&b| u8::from(b != 0)).collect(),
        _ => out,
    };
    Tensor::from_raw_buffer(&out, t.ty.dtype(), &t.size, &Device::Cpu).map_err(|e| e.to_string())
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

    /// A minimal pickle writer for hand-made legacy files.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn int(&mut self, i: i32) -> &mut Self {
            self.op(b"J").op(&i.to_le_bytes())
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
        }
        fn global(&mut self, m: &str, n: &str) -> &mut Self {
            self.op(format!("c{m}\n{n}\n").as_bytes())
        }
        fn ints(&mut self, v: &[i32]) -> &mut Self {
            self.op(b"(");
            for &i in v {
                self.int(i);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
        #[allow(clippy::too_many_arguments)]
        fn tensor(
            &mut self,
            class: &str,
            key: &str,
            numel: i32,
            view: Option<(&str, i32, i32)>,
            offset: i32,
            size: &[i32],
            stride: &[i32],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
            self.str("storage").global("torch", class).str(key).str("cpu").int(numel);
            match view {
                None => self.op(b"N"),
                Some((k, o, n)) => self.op(b"(").str(k).int(o).int(n).op(b"t"),
            };
            self.op(b"tQ").int(offset).ints(size).ints(stride).op(b"\x89");
            self.global("collections", "OrderedDict").op(b")RtR")
        }
    }

    const MAGIC_PICKLE: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];

    /// A legacy file: header pickles, `obj` (a complete pickle body, without PROTO/STOP), the
    /// key list and the storages' (element count, bytes).
    fn file(obj: &P, keys: &[&str], data: &[(i64, &[u8])]) -> Vec<u8> {
        file_with_sys_info(obj, keys, data, true)
    }

    fn file_with_sys_info(obj: &P, keys: &[&str], data: &[(i64, &[u8])], le: bool) -> Vec<u8> {
        let mut f = MAGIC_PICKLE.to_vec();
        f.extend_from_slice(&[0x80, 0x02, b'M', 0xe9, 0x03, b'.']);
        let mut info = P::default();
        info.op(&[0x80, 0x02]).op(b"}(").str("little_endian");
        info.op(if le { b"\x88" } else { b"\x89" }).op(b"u.");
        f.extend_from_slice(&info.0);
        f.extend_from_slice(&[0x80, 0x02]);
        f.extend_from_slice(&obj.0);
        f.push(b'.');
        let mut k = P::default();
        k.op(&[0x80, 0x02]).op(b"](");
        for key in keys {
            k.str(key);
        }
        k.op(b"e.");
        f.extend_from_slice(&k.0);
        for (n, bytes) in data {
            f.extend_from_slice(&n.to_le_bytes());
            f.extend_from_slice(bytes);
        }
        f
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn as_vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn storage_views_and_fortran_strides() {
        // Old torch (< 0.4) storage views: ("v", offset 2, size 3) of root "r" = [0, 1, ..., 5].
        let mut o = P::default();
        o.op(b"}(").str("a");
        o.tensor("FloatStorage", "r", 6, Some(("v", 2, 3)), 1, &[2], &[1]);
        o.str("b").tensor("FloatStorage", "r", 6, None, 0, &[2, 3], &[1, 2]);
        o.op(b"u");
        let data = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
        let t = read_legacy(&file(&o, &["r"], &[(6, &data)])).unwrap();
        assert_eq!(t[0].0, "a");
        assert_eq!(as_vec(&t[0].1), [3., 4.]);
        assert_eq!(t[1].0, "b");
        assert_eq!(t[1].1.dims(), [2, 3]);
        assert_eq!(as_vec(&t[1].1), [0., 2., 4., 1., 3., 5.]);
    }

    #[test]
    fn structures_that_are_not_state_dicts() {
        let err = |o: &P| read_legacy(&file(o, &[], &[])).unwrap_err();
        let mut o = P::default();
        o.int(7);
        assert_eq!(
            err(&o),
            "the saved object is the int 7, not a dict; expected a state_dict saved with \
             torch.save(model.state_dict(), path)"
        );
        let mut o = P::default();
        o.global("torchvision.models.alexnet", "AlexNet").op(b")\x81}b");
        assert_eq!(
            err(&o),
            "the saved object is an object of class torchvision.models.alexnet.AlexNet (a whole \
             pickled model?), not a dict; expected a state_dict saved with \
             torch.save(model.state_dict(), path)"
        );
        let mut o = P::default();
        o.op(b"}(").str("epoch").int(3).str("optimizer").op(b"}u");
        assert_eq!(
            err(&o),
            "no tensors found in the saved dict (keys: [\"epoch\", \"optimizer\"]); expected a \
             state_dict saved with torch.save(model.state_dict(), path)"
        );
        let mut o = P::default();
        o.op(b"}(").str("w").op(b"I1\nu");
        assert_eq!(err(&o), "unsupported pickle opcode 0x49 at byte 56 in the saved object pickle");
        let mut o = P::default();
        o.op(b"}(").str("q").global("torch._utils", "_rebuild_qtensor").op(b")Ru");
        assert_eq!(err(&o), "tensor \"q\" is built by torch._utils._rebuild_qtensor, which is not supported");
    }

    #[test]
    fn inconsistent_storages_are_refused() {
        let one = |class: &str, numel: i32, size: &[i32], data: &[(i64, &[u8])]| {
            let mut o = P::default();
            o.op(b"}(").str("w");
            o.tensor(class, "r", numel, None, 0, size, &[1]).op(b"u");
            read_legacy(&file(&o, &["r"], data)).unwrap_err()
        };
        let three = f32_bytes(&[1., 2., 3.]);
        assert_eq!(
            one("ComplexFloatStorage", 3, &[3], &[(3, &three)]),
            "unsupported storage type torch.ComplexFloatStorage in the saved object pickle"
        );
        assert_eq!(
            one("FloatStorage", 3, &[4], &[(3, &three)]),
            "tensor \"w\": size [4], stride [1] and offset 0 reach past the end of its storage \
             of 3 float32 elements"
        );
        assert_eq!(
            one("FloatStorage", 3, &[3], &[(2, &three)]),
            "storage \"r\" has 2 elements in the data section but 3 in the pickle; corrupt file?"
        );
        let mut o = P::default();
        o.op(b"}(").str("w");
        o.tensor("FloatStorage", "r", 3, None, 0, &[3], &[1]).op(b"u");
        let be = file_with_sys_info(&o, &["r"], &[(3, &three)], false);
        assert_eq!(read_legacy(&be).unwrap_err(), "big-endian checkpoint is not supported");
        // The same file, little-endian, loads.
        let le = file(&o, &["r"], &[(3, &three)]);
        assert_eq!(as_vec(&read_legacy(&le).unwrap()[0].1), [1., 2., 3.]);
    }

    #[test]
    fn long_values_sign_extend() {
        assert!(matches!(long_value(&[0xff]), Value::Int(-1)));
        assert!(matches!(long_value(&[0x00, 0x01]), Value::Int(256)));
        assert!(matches!(long_value(&[]), Value::Int(0)));
        assert!(matches!(long_value(&MAGIC_NUMBER), Value::BigInt(_)));
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
