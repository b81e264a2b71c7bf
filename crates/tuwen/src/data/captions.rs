//! Captioned image sets: CSV/TSV files, folders with sidecar `.txt` captions, and class
//! subfolders captioned from a template.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::files::walk_images;
use crate::{Error, Result};

/// One training pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The image file.
    pub image: PathBuf,
    /// Its caption.
    pub caption: String,
    /// Other columns of the row (CSV) or the class name (`label`, class folders).
    pub extra: BTreeMap<String, String>,
}

/// A parsed delimited file: its header and rows.
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows, each as long as the header.
    pub rows: Vec<Vec<String>>,
}

/// Parses delimited text with RFC 4180 quoting (`"a, b"`, `""` for a quote).
pub fn parse_delimited(text: &str, sep: char) -> std::result::Result<Table, String> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
        } else if c == '"' && field.is_empty() {
            quoted = true;
        } else if c == sep {
            row.push(std::mem::take(&mut field));
        } else if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            row.push(std::mem::take(&mut field));
            if !(row.len() == 1 && row[0].is_empty()) {
                rows.push(std::mem::take(&mut row));
            }
            row.clear();
            line += 1;
        } else {
            field.push(c);
        }
    }
    if quoted {
        return Err(format!("unterminated quote (line {line})"));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    let mut it = rows.into_iter();
    let header = it.next().ok_or("empty file")?;
    let rows: Vec<Vec<String>> = it.collect();
    for (i, r) in rows.iter().enumerate() {
        if r.len() != header.len() {
            return Err(format!(
                "row {} has {} fields, the header has {}",
                i + 2,
                r.len(),
                header.len()
            ));
        }
    }
    Ok(Table { header, rows })
}

/// How to read a CSV/TSV of captions.
#[derive(Clone, Debug)]
pub struct CsvSpec {
    /// The image path column.
    pub image_column: String,
    /// The caption column.
    pub caption_column: String,
    /// The separator; by default `\t` for `.tsv` files and `,` otherwise.
    pub separator: Option<char>,
}

impl Default for CsvSpec {
    fn default() -> Self {
        CsvSpec {
            image_column: "filepath".into(),
            caption_column: "caption".into(),
            separator: None,
        }
    }
}

/// Reads a CSV/TSV; image paths are relative to the file.
pub fn read_csv(path: &Path, spec: &CsvSpec) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let sep = spec.separator.unwrap_or(
        if path.extension().and_then(|e| e.to_str()) == Some("tsv") {
            '\t'
        } else {
            ','
        },
    );
    let table = parse_delimited(&text, sep).map_err(|m| Error::config(path, m))?;
    let col = |name: &str| {
        table.header.iter().position(|h| h == name).ok_or_else(|| {
            Error::config(
                path,
                format!("no column {name:?} (columns: {})", table.header.join(", ")),
            )
        })
    };
    let (ic, cc) = (col(&spec.image_column)?, col(&spec.caption_column)?);
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(table
        .rows
        .iter()
        .map(|r| Sample {
            image: base.join(&r[ic]),
            caption: r[cc].clone(),
            extra: table
                .header
                .iter()
                .zip(r)
                .map(|(h, v)| (h.clone(), v.clone()))
                .collect(),
        })
        .collect())
}

/// Images with a same-named `.txt` beside them; images without one are left out.
pub fn read_sidecar_folder(dir: &Path) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for image in walk_images(dir)? {
        let txt = image.with_extension("txt");
        if let Ok(caption) = std::fs::read_to_string(&txt) {
            out.push(Sample {
                image,
                caption: caption.trim().to_string(),
                extra: BTreeMap::new(),
            });
        }
    }
    Ok(out)
}

/// `dir/<class>/*.png`, captioned by `template` with `{}` for the class name (underscores
/// become spaces); the class is kept as `label`.
pub fn read_class_folders(dir: &Path, template: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for image in walk_images(dir)? {
        let Some(class) = image
            .parent()
            .filter(|p| p != &dir)
            .and_then(|p| p.file_name())
            .map(|c| c.to_string_lossy().replace('_', " "))
        else {
            continue;
        };
        out.push(Sample {
            image,
            caption: template.replace("{}", &class),
            extra: [("label".to_string(), class)].into_iter().collect(),
        });
    }
    Ok(out)
}

/// Opens a data source: a `.csv`/`.tsv` file, a folder with sidecar captions, or a folder of
/// class subfolders (captioned with `template`).
pub fn open(path: &Path, spec: &CsvSpec, template: &str) -> Result<Vec<Sample>> {
    let samples = if path.is_file() {
        read_csv(path, spec)?
    } else if path.is_dir() {
        let sidecar = read_sidecar_folder(path)?;
        if sidecar.is_empty() {
            read_class_folders(path, template)?
        } else {
            sidecar
        }
    } else {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    };
    if samples.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no captioned images found",
            path.display()
        )));
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quotes_and_rejects_ragged_rows() {
        let t = parse_delimited("a,b\n\"x, y\",\"say \"\"hi\"\"\"\r\nz,w\n", ',').unwrap();
        assert_eq!(t.header, ["a", "b"]);
        assert_eq!(
            t.rows,
            vec![
                vec!["x, y".to_string(), "say \"hi\"".into()],
                vec!["z".into(), "w".into()]
            ]
        );
        assert!(parse_delimited("a,b\n1\n", ',').is_err());
        assert!(parse_delimited("a\n\"open\n", ',').is_err());
    }

    #[test]
    fn reads_the_three_layouts() {
        let dir = std::env::temp_dir().join(format!("tuwen-captions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("side")).unwrap();
        std::fs::create_dir_all(dir.join("classes/tabby_cat")).unwrap();
        std::fs::write(dir.join("side/a.png"), b"x").unwrap();
        std::fs::write(dir.join("side/a.txt"), b" a cat \n").unwrap();
        std::fs::write(dir.join("side/b.png"), b"x").unwrap();
        std::fs::write(dir.join("classes/tabby_cat/1.jpg"), b"x").unwrap();
        std::fs::write(
            dir.join("data.tsv"),
            "caption\tfilepath\ta dog\tside/b.png\n",
        )
        .unwrap();
        let s = open(&dir.join("side"), &CsvSpec::default(), "{}").unwrap();
        assert_eq!((s.len(), s[0].caption.as_str()), (1, "a cat"));
        let c = open(
            &dir.join("classes"),
            &CsvSpec::default(),
            "a photo of a {}.",
        )
        .unwrap();
        assert_eq!(c[0].caption, "a photo of a tabby cat.");
        assert_eq!(c[0].extra["label"], "tabby cat");
        let err = open(&dir.join("data.tsv"), &CsvSpec::default(), "{}");
        assert!(err.is_err(), "a one-line TSV has no rows");
        std::fs::write(
            dir.join("data.tsv"),
            "caption\tfilepath\na dog\tside/b.png\n",
        )
        .unwrap();
        let t = open(&dir.join("data.tsv"), &CsvSpec::default(), "{}").unwrap();
        assert_eq!(t[0].image, dir.join("side/b.png"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
