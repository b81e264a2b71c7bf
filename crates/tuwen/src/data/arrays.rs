//! Sets of points from `.npy` and `.csv` files, and `.npy` writing.
//!
//! A set is a table: one row per sample, `dims` numbers per row. In a `.npy` file the first
//! axis is the sample axis and the others are flattened into the row (a 1-D array is a set of
//! scalars). In a `.csv` file each line is a row; a first line that holds no number is a
//! header and is skipped.
//!
//! The `.npy` reader and writer are written here rather than taken from a crate: only
//! little-endian float32/float64 arrays in C order are needed, which is a 10-byte preamble and
//! a one-line Python dict before the raw values (format versions 1.0, 2.0 and 3.0), and it
//! keeps the library's dependency tree unchanged.

use std::path::Path;

use crate::hub::write_atomic;
use crate::{Error, Result};

/// A set of points, row-major: point `i` is `data[i * dims..(i + 1) * dims]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Points {
    /// The coordinates, `rows * dims` of them.
    pub data: Vec<f64>,
    /// The number of points.
    pub rows: usize,
    /// The number of coordinates of each point.
    pub dims: usize,
}

impl Points {
    /// A checked set: at least one point, at least one coordinate, `rows * dims` finite values.
    pub fn new(data: Vec<f64>, rows: usize, dims: usize) -> Result<Self> {
        let points = Points { data, rows, dims };
        points.validate()?;
        Ok(points)
    }

    /// Checks what [`Points::new`] checks, for a set built field by field.
    pub fn validate(&self) -> Result<()> {
        if self.rows == 0 {
            return Err(Error::InvalidInput("the set of points is empty".into()));
        }
        if self.dims == 0 {
            return Err(Error::InvalidInput(
                "the points have no coordinates (0 dimensions)".into(),
            ));
        }
        if Some(self.data.len()) != self.rows.checked_mul(self.dims) {
            return Err(Error::InvalidInput(format!(
                "{} values do not make {} points of {} coordinates",
                self.data.len(),
                self.rows,
                self.dims
            )));
        }
        if let Some(k) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "point {} coordinate {} is {} (values must be finite)",
                k / self.dims,
                k % self.dims,
                self.data[k]
            )));
        }
        Ok(())
    }

    /// Point `i`'s coordinates.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.dims..(i + 1) * self.dims]
    }
}

/// Reads a set of points from a `.npy` (float32 or float64) or `.csv` file, by extension.
pub fn read_points(path: &Path) -> Result<Points> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let points = match ext.as_deref() {
        Some("npy") => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let (data, shape) = parse_npy(&bytes).map_err(|e| in_file(path, e))?;
            let rows = shape
                .first()
                .copied()
                .ok_or_else(|| in_file(path, "a 0-d array (a scalar) has no sample axis".into()))?;
            let dims = shape[1..].iter().product();
            Points { data, rows, dims }
        }
        Some("csv") => read_csv(path)?,
        _ => {
            return Err(Error::InvalidInput(format!(
                "{}: unknown extension, expected .npy or .csv",
                path.display()
            )));
        }
    };
    points
        .validate()
        .map_err(|e| in_file(path, e.to_string()))?;
    Ok(points)
}

fn in_file(path: &Path, message: String) -> Error {
    Error::InvalidInput(format!("{}: {message}", path.display()))
}

/// Rows of numbers separated by commas; a first row without any number is a header.
fn read_csv(path: &Path) -> Result<Points> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| in_file(path, e.to_string()))?;
    let mut data = Vec::new();
    let (mut rows, mut dims) = (0usize, 0usize);
    let mut first_line = 0;
    for (k, record) in reader.records().enumerate() {
        let record = record.map_err(|e| in_file(path, e.to_string()))?;
        let line = record.position().map_or(k as u64 + 1, |p| p.line());
        let fields: Vec<&str> = record.iter().collect();
        let parsed: Vec<Option<f64>> = fields.iter().map(|f| f.parse::<f64>().ok()).collect();
        if k == 0 && parsed.iter().all(Option::is_none) {
            continue; // a header
        }
        if let Some(c) = parsed.iter().position(Option::is_none) {
            return Err(in_file(
                path,
                format!(
                    "line {line}, column {}: {:?} is not a number",
                    c + 1,
                    fields[c]
                ),
            ));
        }
        if rows == 0 {
            dims = fields.len();
            first_line = line;
        } else if fields.len() != dims {
            return Err(in_file(
                path,
                format!(
                    "line {line} has {} values, line {first_line} has {dims} (rows must be the same width)",
                    fields.len()
                ),
            ));
        }
        data.extend(parsed.into_iter().flatten());
        rows += 1;
    }
    Ok(Points { data, rows, dims })
}

/// The values (as f64) and shape of a little-endian float32/float64 C-order `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<(Vec<f64>, Vec<usize>), String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("the .npy header is truncated or not text")?;
    let descr = dict_value(header, "descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let size = match descr {
        "<f4" => 4,
        "<f8" => 8,
        _ => {
            return Err(format!(
                "dtype {descr:?} is not supported: expected float32 or float64, little-endian (<f4, <f8)"
            ));
        }
    };
    match dict_value(header, "fortran_order")? {
        "False" => {}
        "True" => {
            return Err("the array is in Fortran order; save it in C order \
                        (numpy.ascontiguousarray)"
                .into());
        }
        v => return Err(format!("bad fortran_order {v:?} in the .npy header")),
    }
    let shape_text = dict_value(header, "shape")?;
    let shape = shape_text
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| format!("bad shape {shape_text:?} in the .npy header"))?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("the shape's size overflows")?;
    let body = &bytes[start + header_len..];
    if Some(body.len()) != count.checked_mul(size) {
        return Err(format!(
            "shape {shape:?} of {descr} needs {} bytes of data, the file has {}",
            count.saturating_mul(size),
            body.len()
        ));
    }
    let data = if size == 4 {
        body.chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    } else {
        body.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")))
            .collect()
    };
    Ok((data, shape))
}

/// The text of `key`'s value in a .npy header dict, e.g. `'<f4'`, `False` or `(3, 2)`.
fn dict_value<'a>(header: &'a str, key: &str) -> std::result::Result<&'a str, String> {
    let missing = || format!("the .npy header has no {key:?}: {}", header.trim());
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))
        .ok_or_else(missing)?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':').ok_or_else(missing)?;
    let rest = rest.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(missing)?;
    Ok(rest[..end].trim())
}

/// The bytes of a float32 little-endian C-order `.npy` file (format 1.0, or 2.0 for a header
/// too long for 1.0) holding `data` with `shape`.
pub fn npy_bytes(data: &[f32], shape: &[usize]) -> Result<Vec<u8>> {
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if count != Some(data.len()) {
        return Err(Error::InvalidInput(format!(
            "{} values do not fill shape {shape:?}",
            data.len()
        )));
    }
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // The preamble, the header and its newline end on a multiple of 64 bytes.
    let preamble = if header.len() + 11 <= usize::from(u16::MAX) {
        10
    } else {
        12
    };
    let pad = (64 - (preamble + header.len() + 1) % 64) % 64;
    header.extend(std::iter::repeat_n(' ', pad));
    header.push('\n');
    let mut bytes = Vec::with_capacity(preamble + header.len() + 4 * data.len());
    bytes.extend_from_slice(b"\x93NUMPY");
    if preamble == 10 {
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        bytes.extend_from_slice(&[2, 0]);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    Ok(bytes)
}

/// Writes `data` with `shape` as a float32 little-endian C-order `.npy` file, atomically.
pub fn write_npy(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    write_atomic(path, &npy_bytes(data, shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_f64(values: &[f64], shape: &str, descr: &str, fortran: &str) -> Vec<u8> {
        let header = format!(
            "{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}          \n"
        );
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn err(path: &Path) -> String {
        read_points(path).unwrap_err().to_string()
    }

    #[test]
    fn npy_round_trip_flattens_trailing_axes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let p = dir.path().join("x.npy");
        write_npy(&p, &data, &[4, 2, 3]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((bytes.len() - 4 * 24) % 64, 0, "header aligned to 64 bytes");
        let pts = read_points(&p).unwrap();
        assert_eq!((pts.rows, pts.dims), (4, 6));
        let back: Vec<f32> = pts.data.iter().map(|&v| v as f32).collect();
        assert_eq!(back, data);
        assert_eq!(pts.row(1), &pts.data[6..12]);

        write_npy(&p, &[1.5, 2.5, -1.0], &[3]).unwrap();
        let pts = read_points(&p).unwrap();
        assert_eq!((pts.rows, pts.dims, pts.data), (3, 1, vec![1.5, 2.5, -1.0]));
        let (_, shape) = parse_npy(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(shape, vec![3]);
    }

    #[test]
    fn npy_f64_is_read_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let v = [0.1, -2.0, 1e-300, 3.25];
        let p = write(dir.path(), "a.NPY", &npy_f64(&v, "(2, 2)", "<f8", "False"));
        let pts = read_points(&p).unwrap();
        assert_eq!((pts.rows, pts.dims, pts.data), (2, 2, v.to_vec()));
    }

    #[test]
    fn write_npy_checks_the_shape() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        assert!(write_npy(&p, &[1.0, 2.0], &[3]).is_err());
        assert!(!p.exists());
    }

    #[test]
    fn npy_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = write(d, "i.npy", &npy_f64(&[1.0], "(1,)", "<i8", "False"));
        assert!(err(&p).contains("dtype"), "{}", err(&p));
        let p = write(d, "b.npy", &npy_f64(&[1.0], "(1,)", ">f8", "False"));
        assert!(err(&p).contains("dtype"), "{}", err(&p));
        let p = write(d, "f.npy", &npy_f64(&[1.0; 4], "(2, 2)", "<f8", "True"));
        assert!(err(&p).contains("Fortran"), "{}", err(&p));
        let p = write(
            d,
            "n.npy",
            &npy_f64(&[1.0, f64::NAN], "(2,)", "<f8", "False"),
        );
        assert!(err(&p).contains("NaN"), "{}", err(&p));
        let p = write(
            d,
            "inf.npy",
            &npy_f64(&[f64::INFINITY], "(1,)", "<f8", "False"),
        );
        assert!(err(&p).contains("inf"), "{}", err(&p));
        let p = write(d, "e.npy", &npy_f64(&[], "(0, 3)", "<f8", "False"));
        assert!(err(&p).contains("empty"), "{}", err(&p));
        let p = write(d, "s.npy", &npy_f64(&[1.0], "()", "<f8", "False"));
        assert!(err(&p).contains("0-d"), "{}", err(&p));
        let p = write(d, "t.npy", &npy_f64(&[1.0, 2.0], "(3,)", "<f8", "False"));
        assert!(err(&p).contains("bytes"), "{}", err(&p));
        let p = write(d, "g.npy", b"garbage");
        assert!(err(&p).contains("magic"), "{}", err(&p));
        let p = write(d, "x.txt", b"1,2\n");
        assert!(err(&p).contains("unknown extension"), "{}", err(&p));
        assert!(read_points(&d.join("missing.npy")).is_err());
    }

    #[test]
    fn csv_with_and_without_header() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = write(d, "h.csv", b"x, y\n1, 2\n3.5,-4e1\n\n0,0\n");
        let pts = read_points(&p).unwrap();
        assert_eq!((pts.rows, pts.dims), (3, 2));
        assert_eq!(pts.data, vec![1.0, 2.0, 3.5, -40.0, 0.0, 0.0]);
        let p = write(d, "n.csv", b"1\n2\n3\n");
        let pts = read_points(&p).unwrap();
        assert_eq!((pts.rows, pts.dims, pts.data), (3, 1, vec![1.0, 2.0, 3.0]));
    }

    #[test]
    fn csv_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = write(d, "r.csv", b"1,2\n3\n");
        assert!(err(&p).contains("same width"), "{}", err(&p));
        let p = write(d, "w.csv", b"a,b\n1,x\n");
        assert!(err(&p).contains("not a number"), "{}", err(&p));
        let p = write(d, "m.csv", b"1,b\n1,2\n");
        assert!(err(&p).contains("not a number"), "{}", err(&p));
        let p = write(d, "e.csv", b"a,b\n");
        assert!(err(&p).contains("empty"), "{}", err(&p));
        let p = write(d, "z.csv", b"");
        assert!(err(&p).contains("empty"), "{}", err(&p));
        let p = write(d, "n.csv", b"1,nan\n");
        assert!(err(&p).contains("NaN"), "{}", err(&p));
        let p = write(d, "i.csv", b"1,2\ninf,3\n");
        assert!(err(&p).contains("inf"), "{}", err(&p));
    }
}
