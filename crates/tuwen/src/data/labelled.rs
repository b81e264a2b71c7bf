//! Labelled images for classification: a CSV/TSV with a label column, or class subfolders.

use std::path::Path;

use super::captions::{CsvSpec, Sample, open, read_csv};
use crate::{Error, Result};

/// Labelled images: a CSV/TSV whose `label_column` names the class, or class subfolders (the
/// label is the folder name). Each sample's caption is its label, and `extra[label_column]`
/// holds it too.
pub fn labelled(path: &Path, label_column: &str) -> Result<Vec<Sample>> {
    if path.is_dir() {
        let mut s = open(path, &CsvSpec::default(), "{}")?;
        for x in &mut s {
            if let Some(l) = x.extra.get("label").cloned() {
                x.extra.insert(label_column.to_string(), l);
            }
        }
        return Ok(s);
    }
    let spec = CsvSpec {
        caption_column: label_column.to_string(),
        ..CsvSpec::default()
    };
    let mut s = read_csv(path, &spec)?;
    for x in &mut s {
        x.extra.insert(label_column.to_string(), x.caption.clone());
    }
    Ok(s)
}

/// The sorted distinct labels (captions) of `samples`; an error naming `source` when there are
/// fewer than two.
pub fn class_names(samples: &[Sample], source: &Path) -> Result<Vec<String>> {
    let mut labels: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.len() < 2 {
        return Err(Error::InvalidInput(format!(
            "{}: need at least two classes, found {}",
            source.display(),
            labels.len()
        )));
    }
    Ok(labels)
}
