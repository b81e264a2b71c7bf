//! The library's layering holds: inference (`pipeline`), the models, the data and the losses
//! never reach into training code.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn inference_models_data_and_losses_never_import_train() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in ["pipeline", "models", "data", "nn"] {
        sources(&src.join(part), &mut files);
    }
    files.extend(["loss.rs", "eval.rs", "hub.rs"].map(|f| src.join(f)));
    assert!(files.len() > 15, "found only {} files", files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for needle in ["crate::train", "super::train", "tuwen::train"] {
            assert!(!text.contains(needle), "{} uses {needle}", f.display());
        }
    }
}
