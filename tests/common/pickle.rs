//! Hand-made torch checkpoints for the hostile-input tests: a small pickle writer ([`P`]), the
//! legacy container ([`legacy_file`]) and the zip one ([`zip_file`]) around it. Only the opcodes
//! torch writes are needed; what a test crafts with them (self-references through the memo,
//! deep nesting, aliased storages, huge declared sizes) is up to the test.

use std::io::Write;

/// A pickle body under construction (protocol 2 opcodes; no PROTO/STOP unless added).
#[derive(Default, Clone)]
pub struct P(pub Vec<u8>);

impl P {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn int(&mut self, i: i32) -> &mut Self {
        self.op(b"J").op(&i.to_le_bytes())
    }
    /// A LONG1: an int of any size up to 255 bytes (sizes beyond i32).
    pub fn long(&mut self, i: i64) -> &mut Self {
        self.op(&[0x8a, 8]).op(&i.to_le_bytes())
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
    }
    pub fn global(&mut self, m: &str, n: &str) -> &mut Self {
        self.op(format!("c{m}\n{n}\n").as_bytes())
    }
    /// BINPUT: memoise the top of the stack at `i` (< 256).
    pub fn put(&mut self, i: u8) -> &mut Self {
        self.op(&[b'q', i])
    }
    /// BINGET: push memo `i` (< 256).
    pub fn get(&mut self, i: u8) -> &mut Self {
        self.op(&[b'h', i])
    }
    pub fn ints(&mut self, v: &[i64]) -> &mut Self {
        self.op(b"(");
        for &i in v {
            self.long(i);
        }
        self.op(b"t")
    }
    /// The persistent id of a storage: legacy (with a view slot) or zip (without).
    pub fn storage(&mut self, class: &str, key: &str, numel: i64, legacy: bool) -> &mut Self {
        self.op(b"(").str("storage").global("torch", class).str(key).str("cpu").long(numel);
        if legacy {
            self.op(b"N");
        }
        self.op(b"tQ")
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    #[allow(clippy::too_many_arguments)]
    pub fn tensor(&mut self, class: &str, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64], legacy: bool) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        self.storage(class, key, numel, legacy);
        self.long(offset).ints(size).ints(stride).op(b"\x89");
        self.global("collections", "OrderedDict").op(b")RtR")
    }
}

/// The first pickle of every legacy file: torch's magic number.
const MAGIC_PICKLE: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];

/// A legacy `.pth`: the header pickles, `obj` (a pickle body without PROTO/STOP), the storage
/// key list and each storage's (element count, bytes).
pub fn legacy_file(obj: &P, keys: &[&str], data: &[(i64, &[u8])]) -> Vec<u8> {
    let mut f = MAGIC_PICKLE.to_vec();
    f.extend_from_slice(&[0x80, 0x02, b'M', 0xe9, 0x03, b'.']);
    let mut info = P::new();
    info.op(&[0x80, 0x02]).op(b"}(").str("little_endian").op(b"\x88").op(b"u.");
    f.extend_from_slice(&info.0);
    f.extend_from_slice(&[0x80, 0x02]);
    f.extend_from_slice(&obj.0);
    f.push(b'.');
    let mut k = P::new();
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

/// A zip `.pth` as `torch.save` lays it out (`archive/data.pkl`, `archive/data/<key>`,
/// `archive/byteorder`), members stored or deflated.
pub fn zip_file(obj: &P, storages: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let mut pkl = vec![0x80, 0x02];
    pkl.extend_from_slice(&obj.0);
    pkl.push(b'.');
    let mut members: Vec<(String, Vec<u8>)> = vec![("archive/data.pkl".into(), pkl), ("archive/byteorder".into(), b"little".to_vec())];
    for (key, bytes) in storages {
        members.push((format!("archive/data/{key}"), bytes.to_vec()));
    }
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in &members {
        w.start_file(name.as_str(), options).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Little-endian bytes of `v`.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
