//! NumPy `.npy` and `.npz` encoding in memory (format 1.0, little-endian, C order: what
//! `np.save` and `np.savez` write), so statistics and sample arrays reach disk only through the
//! atomic writer (`files::atomic`). candle's own `write_npy`/`write_npz` write into a file
//! directly and finish the zip on drop, where an error (a full disk) is lost. Reference:
//! <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.

use std::io::{Cursor, Write};

/// An array's element type and its little-endian bytes.
pub trait NpyElement: Copy {
    /// The `descr` of the header (`<f8`, `<f4`).
    const DESCR: &'static str;
    fn put(self, out: &mut Vec<u8>);
}

impl NpyElement for f64 {
    const DESCR: &'static str = "<f8";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl NpyElement for f32 {
    const DESCR: &'static str = "<f4";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// The bytes of an `.npy` file holding `values` with `shape` (C order). Errors when the shape
/// does not hold exactly `values.len()` elements.
pub fn encode_npy<T: NpyElement>(values: &[T], shape: &[usize]) -> Result<Vec<u8>, String> {
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if count != Some(values.len()) {
        return Err(format!("shape {shape:?} does not hold {} values", values.len()));
    }
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}", T::DESCR);
    // Magic (6) + version (2) + header length (2) + header + '\n', padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let header_len = u16::try_from(header.len()).map_err(|_| format!("shape {shape:?}: header too long for .npy 1.0"))?;
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * std::mem::size_of::<T>());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &v in values {
        v.put(&mut out);
    }
    Ok(out)
}

/// The bytes of an uncompressed `.npz` (a zip of `<name>.npy` members, as `np.savez`) holding
/// each `(name, npy bytes)`.
pub fn encode_npz(members: &[(&str, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(members.iter().any(|(_, b)| b.len() as u64 >= u32::MAX as u64));
    for (name, bytes) in members {
        zip.start_file(format!("{name}.npy"), options).map_err(|e| e.to_string())?;
        zip.write_all(bytes).map_err(|e| e.to_string())?;
    }
    Ok(zip.finish().map_err(|e| e.to_string())?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_are_numpys_and_candle_reads_the_arrays_back() {
        let bytes = encode_npy(&[1.0f64, 2.0, 3.0], &[3]).unwrap();
        // np.save(f, np.array([1., 2., 3.])) writes exactly this header.
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }";
        assert_eq!(&bytes[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert!(bytes[10..].starts_with(header.as_bytes()));
        assert_eq!((10 + 0x76) % 64, 0);
        assert_eq!(bytes[10 + 0x75], b'\n');
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..6).map(|v| v as f32 / 4.0).collect();
        let path = dir.path().join("x.npy");
        std::fs::write(&path, encode_npy(&values, &[2, 3]).unwrap()).unwrap();
        let t = candle_core::Tensor::read_npy(&path).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
        assert!(encode_npy(&values, &[4, 2]).unwrap_err().contains("does not hold 6 values"));
        let npz = dir.path().join("s.npz");
        let members = [("mu", encode_npy(&[0.5f64], &[1]).unwrap()), ("sigma", encode_npy(&[2.0f64], &[1, 1]).unwrap())];
        std::fs::write(&npz, encode_npz(&members).unwrap()).unwrap();
        let arrays = candle_core::Tensor::read_npz(&npz).unwrap();
        let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["mu", "sigma"]);
        assert_eq!(arrays[1].1.dims(), &[1, 1]);
    }
}
