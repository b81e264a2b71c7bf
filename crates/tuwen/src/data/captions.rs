//! Captioned image sets: CSV/TSV files, folders with sidecar `.txt` captions, and class
//! subfolders captioned from a template.

use std::collections::BTreeMap;
use std::io::Read;
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

/// Parses delimited text with RFC 4180 quoting (`"a, b"`, `""` for a quote, line breaks
/// inside quotes) through the `csv` crate. A leading UTF-8 byte-order mark is dropped and
/// blank lines are skipped. Errors are one line: an empty text, a row whose field count is
/// not the header's, an unterminated quote.
pub fn parse_delimited(text: &str, sep: char) -> std::result::Result<Table, String> {
    /// A line after the text: it comes out as a record of its own only when every quote is
    /// closed (an open one swallows the rest of the input into its field).
    const END: &str = "\n\u{0}end of input\u{0}";
    let sep = u8::try_from(sep)
        .ok()
        .filter(u8::is_ascii)
        .ok_or_else(|| format!("separator {sep:?} is not one ASCII character"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(sep)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes().chain(END.as_bytes()));
    // Each row with the byte it starts at.
    let mut rows: Vec<(u64, Vec<String>)> = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        let byte = record.position().map_or(0, |p| p.byte());
        rows.push((byte, record.iter().map(str::to_string).collect()));
    }
    // The line a row starts on (the reader's position precedes the blank lines it skipped).
    let line = |byte: u64| {
        let at = usize::try_from(byte).map_or(text.len(), |b| b.min(text.len()));
        let (before, after) = (text.get(..at).unwrap_or(""), text.get(at..).unwrap_or(""));
        let blank = &after[..after.len() - after.trim_start_matches(['\r', '\n']).len()];
        before.matches('\n').count() + blank.matches('\n').count() + 1
    };
    match rows.pop() {
        Some((_, end)) if end.len() == 1 && end[0] == END[1..] => {}
        last => {
            let at = line(last.map_or(0, |(byte, _)| byte));
            return Err(format!("unterminated quote in the row of line {at}"));
        }
    }
    let mut it = rows.into_iter();
    let (_, header) = it.next().ok_or("empty file")?;
    let mut out = Vec::new();
    for (byte, row) in it {
        if row.len() != header.len() {
            return Err(format!(
                "the row of line {} has {} fields, the header has {}",
                line(byte),
                row.len(),
                header.len()
            ));
        }
        out.push(row);
    }
    Ok(Table { header, rows: out })
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
                format!(
                    "no column {name:?} (columns: {})",
                    table
                        .header
                        .iter()
                        .map(|h| h.escape_debug().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
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
    if !template.contains("{}") {
        return Err(Error::InvalidInput(format!(
            "--caption-template {template:?} has no {{}} for the class name: every caption \
             would be the same"
        )));
    }
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
    fn csv_quoting_bom_and_errors() {
        let dir = std::env::temp_dir().join(format!("tuwen-csv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = CsvSpec::default();
        // A byte-order mark before the header, CRLF and a blank line, a quoted separator, a
        // line break inside quotes, doubled quotes, an absolute path.
        std::fs::write(
            dir.join("q.csv"),
            "\u{feff}filepath,caption,n\r\nimg/a.png,\"a cat, on a mat\",1\r\n\r\n\
             \"img/b.png\",\"two\nlines\",2\nc.png,\"say \"\"hi\"\"\",3\n/abs/d.png,plain,4",
        )
        .unwrap();
        let s = read_csv(&dir.join("q.csv"), &spec).unwrap();
        let captions: Vec<&str> = s.iter().map(|s| s.caption.as_str()).collect();
        assert_eq!(
            captions,
            ["a cat, on a mat", "two\nlines", "say \"hi\"", "plain"]
        );
        assert_eq!(s[0].image, dir.join("img/a.png"));
        assert_eq!(s[1].image, dir.join("img/b.png"));
        assert_eq!(s[3].image, Path::new("/abs/d.png"));
        assert_eq!(s[2].extra["n"], "3");
        assert_eq!(
            s[0].extra.keys().collect::<Vec<_>>(),
            ["caption", "filepath", "n"]
        );
        // Tabs by default for .tsv, where commas are plain text; `separator` overrides.
        std::fs::write(dir.join("t.tsv"), "caption\tfilepath\na, b\tx.png\n").unwrap();
        assert_eq!(
            read_csv(&dir.join("t.tsv"), &spec).unwrap()[0].caption,
            "a, b"
        );
        std::fs::write(dir.join("p.txt"), "filepath|caption\nx.png|\"a|b\"\n").unwrap();
        let piped = CsvSpec {
            separator: Some('|'),
            ..CsvSpec::default()
        };
        assert_eq!(
            read_csv(&dir.join("p.txt"), &piped).unwrap()[0].caption,
            "a|b"
        );
        // Errors: one line naming the file and what is wrong.
        let err = |name: &str, text: &str, spec: &CsvSpec| {
            std::fs::write(dir.join(name), text).unwrap();
            let e = read_csv(&dir.join(name), spec).unwrap_err().to_string();
            assert!(e.contains(name) && !e.contains('\n'), "{e}");
            e
        };
        let text_column = CsvSpec {
            caption_column: "text".into(),
            ..CsvSpec::default()
        };
        let e = err("m.csv", "\u{feff}filepath,caption\na.png,x\n", &text_column);
        assert!(
            e.contains("no column \"text\" (columns: filepath, caption)"),
            "{e}"
        );
        let e = err(
            "r.csv",
            "filepath,caption\na.png,one\n\"b\n.png\",two\nc.png\n",
            &spec,
        );
        assert!(e.contains("line 5 has 1 fields, the header has 2"), "{e}");
        let e = err(
            "w.csv",
            "filepath,caption\r\n\r\n\r\na.png,one,two\r\n",
            &spec,
        );
        assert!(e.contains("line 4 has 3 fields"), "{e}");
        assert!(err("e.csv", "", &spec).contains("empty file"));
        assert!(err("b.csv", "\u{feff}\n\n", &spec).contains("empty file"));
        let e = err("u.csv", "filepath,caption\na.png,\"open\nb.png,x\n", &spec);
        assert!(e.contains("unterminated quote in the row of line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
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
