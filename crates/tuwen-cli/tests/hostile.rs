//! Hostile and careless input (issue 11): every command here must end with one clear line and a
//! non-zero exit (or skip what it promised to skip), never abort, panic or hang, stay under
//! about 1 GB, and leave every input and earlier output as it was. The hostile files are made
//! here, not committed.
//!
//! Every command in this binary is small, so the peak memory of all of them together is
//! checked through `getrusage(RUSAGE_CHILDREN)` after each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Runs `tuwen` in `cwd`, killing it after 60 s (a hang fails the test).
fn tuwen_in(cwd: &Path, args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "HF_HUB_CACHE",
            std::env::temp_dir().join("tuwen-test-empty-hf-cache"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    // A watchdog kills it after 60 s; the output is read meanwhile (a full pipe would block).
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let watch = done.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if watch.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    use std::os::unix::process::ExitStatusExt;
    assert_ne!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "tuwen {args:?} hung for 60 s"
    );
    assert!(
        peak_child_rss_mb() < 1024,
        "a command used {} MB",
        peak_child_rss_mb()
    );
    out
}

/// The largest resident set of any finished child process of this test binary, in MB.
fn peak_child_rss_mb() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss / 1024
}

/// A failure: one `error:` line on stderr containing `needle`, last (a training command may
/// say what data it found before), a non-zero exit, no panic or abort.
fn fails(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {err}");
    assert_eq!(
        o.status.code(),
        Some(1),
        "killed or aborted: {:?} {err}",
        o.status
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "not one error line: {err:?}");
    assert!(
        err.trim_end().lines().last() == Some(errors[0]),
        "the error is not last: {err:?}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{err:?} lacks {needle:?}"
    );
}

/// A scratch folder for test `tag`, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tuwen-hostile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    fn s(&self, p: &str) -> String {
        self.join(p).to_str().unwrap().to_string()
    }

    /// A copy of a fixture checkpoint at `name`.
    fn copy_fixture(&self, fixture: &str, name: &str) -> PathBuf {
        let dst = self.join(name);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(fixtures().join(fixture)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
        dst
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file under `dir` with its bytes: to show that a failed command changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

fn crc32(kind: &[u8], data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in kind.iter().chain(data) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A 100-byte PNG that claims `side` x `side` RGB pixels.
fn png_bomb(side: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&crc32(kind, data).to_be_bytes());
        c
    };
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// A real JPEG whose frame header is patched to claim `side` x `side` pixels.
fn jpeg_bomb(side: u16) -> Vec<u8> {
    let mut b = std::fs::read(fixtures().join("images/chelsea.jpg")).unwrap();
    let mut i = 2;
    while i + 9 < b.len() {
        let (marker, len) = (b[i + 1], u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize);
        if matches!(marker, 0xC0..=0xC2) {
            b[i + 5..i + 7].copy_from_slice(&side.to_be_bytes());
            b[i + 7..i + 9].copy_from_slice(&side.to_be_bytes());
            return b;
        }
        i += 2 + len;
    }
    panic!("no frame header");
}

fn image(name: &str) -> String {
    fixtures()
        .join("images")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// A labelled CSV of `n` copies of a fixture picture, in `dir`.
fn small_set(dir: &Path, n: usize) -> PathBuf {
    let mut csv = String::from("filepath,caption,label\n");
    for i in 0..n {
        let name = format!("img{i}.png");
        std::fs::copy(fixtures().join("images/chelsea_32.png"), dir.join(&name)).unwrap();
        let label = if i % 2 == 0 { "cat" } else { "dog" };
        csv.push_str(&format!("{name},a photo of a {label},{label}\n"));
    }
    let path = dir.join("data.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

#[test]
fn decompression_bombs_are_refused_and_skipped() {
    let s = Scratch::new("bombs");
    std::fs::write(s.join("bomb.png"), png_bomb(100_000)).unwrap();
    std::fs::write(s.join("bomb.jpg"), jpeg_bomb(20_000)).unwrap();
    let vit = fixtures().join("vit-tiny");
    for bomb in ["bomb.png", "bomb.jpg"] {
        let o = tuwen_in(
            &s.0,
            &[
                "classify",
                "--model",
                vit.to_str().unwrap(),
                "--image",
                &s.s(bomb),
            ],
        );
        fails(&o, "--max-image-pixels");
    }
    // The cap can be raised (the JPEG then decodes as far as its data goes) and lowered.
    let o = tuwen_in(
        &s.0,
        &[
            "--max-image-pixels",
            "100",
            "classify",
            "--model",
            vit.to_str().unwrap(),
            "--image",
            &image("chelsea_32.png"),
        ],
    );
    fails(&o, "more than the limit of 100");

    // A folder: the bombs are skipped and counted like any unreadable file.
    let dir = s.join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bomb.png"), png_bomb(100_000)).unwrap();
    std::fs::write(dir.join("bomb.jpg"), jpeg_bomb(20_000)).unwrap();
    std::fs::copy(image("chelsea_32.png"), dir.join("cat.png")).unwrap();
    let clip = fixtures().join("clip-tiny");
    let o = tuwen_in(
        &s.0,
        &[
            "embed",
            "--model",
            clip.to_str().unwrap(),
            "--images",
            dir.to_str().unwrap(),
            "--json",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("embedded 1 of 3 images") && err.contains("2 skipped"),
        "{err}"
    );

    // Training data: the bomb is skipped and counted, the run goes on.
    let data = small_set(&s.0, 6);
    std::fs::write(s.join("img0.png"), png_bomb(100_000)).unwrap();
    let o = tuwen_in(
        &s.0,
        &[
            "train",
            "clip",
            "--data",
            data.to_str().unwrap(),
            "--out",
            &s.s("run"),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--warmup",
            "0",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("unreadable images skipped") && !err.contains(" 0 unreadable"),
        "{err}"
    );
    // Evaluation skips and counts it too.
    for eval in ["zero-shot", "retrieval"] {
        let o = tuwen_in(
            &s.0,
            &[
                "eval",
                eval,
                "--model",
                clip.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--json",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            (v["n"].as_u64(), v["skipped"].as_u64()),
            (Some(5), Some(1)),
            "{v}"
        );
    }
}

#[test]
fn truncated_jpegs_fifos_and_folders_are_not_images() {
    let s = Scratch::new("files");
    let full = std::fs::read(fixtures().join("images/chelsea.jpg")).unwrap();
    std::fs::write(s.join("cut.jpg"), &full[..full.len() * 2 / 3]).unwrap();
    let vit = fixtures().join("vit-tiny");
    let o = tuwen_in(
        &s.0,
        &[
            "classify",
            "--model",
            vit.to_str().unwrap(),
            "--image",
            &s.s("cut.jpg"),
        ],
    );
    fails(&o, "truncated");

    // A FIFO named like an image in a folder is passed over (opening it would block forever).
    let dir = s.join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(image("chelsea_32.png"), dir.join("cat.png")).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(dir.join("pipe.png"))
            .status()
            .unwrap()
            .success()
    );
    let clip = fixtures().join("clip-tiny");
    let o = tuwen_in(
        &s.0,
        &[
            "embed",
            "--model",
            clip.to_str().unwrap(),
            "--images",
            dir.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Given by name, it is refused without being opened.
    let o = tuwen_in(
        &s.0,
        &[
            "classify",
            "--model",
            vit.to_str().unwrap(),
            "--image",
            dir.join("pipe.png").to_str().unwrap(),
        ],
    );
    fails(&o, "not a regular file");

    // An empty folder, and a folder of unreadable files, are errors, not "embedded 0".
    let empty = s.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = tuwen_in(
        &s.0,
        &[
            "embed",
            "--model",
            clip.to_str().unwrap(),
            "--images",
            empty.to_str().unwrap(),
        ],
    );
    fails(&o, "no image files found");
    std::fs::write(empty.join("junk.png"), b"not a picture").unwrap();
    let o = tuwen_in(
        &s.0,
        &[
            "embed",
            "--model",
            clip.to_str().unwrap(),
            "--images",
            empty.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.trim_end().ends_with("could be read"),
        "{err}"
    );
}

#[test]
fn a_failed_training_run_changes_nothing() {
    let s = Scratch::new("failed-run");
    let data = small_set(&s.0, 6);
    // RUN holds a "trained" model and its metrics from an earlier run.
    let run = s.copy_fixture("clip-tiny", "run");
    std::fs::write(run.join("metrics.jsonl"), "{\"step\":0,\"loss\":1.0}\n").unwrap();
    let before = snapshot(&run);
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "clip",
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tuwen_in(&s.0, &args)
    };
    fails(&train(&["--batch-size", "1"]), "--batch-size");
    fails(&train(&["--batch-size", "5000"]), "fewer than one batch");
    fails(
        &train(&["--batch-size", "4", "--steps", "0"]),
        "--steps must be at least 1",
    );
    // 4096-pixel images in 8-pixel patches: 262144 tokens an image, far beyond memory.
    let huge = ["--batch-size", "4", "--image-size", "4096"];
    fails(&train(&huge), "lower --batch-size");
    fails(
        &train(&["--batch-size", "4", "--image-size", "1000000"]),
        "image_size",
    );
    fails(
        &train(&["--batch-size", "4", "--init", run.to_str().unwrap()]),
        "would replace the input",
    );
    assert!(
        snapshot(&run) == before,
        "a failed run changed {}",
        run.display()
    );

    // Every image unreadable: an error, and nothing written, neither there nor in a new folder.
    for i in 0..6 {
        std::fs::write(s.join(&format!("img{i}.png")), b"junk").unwrap();
    }
    fails(
        &train(&["--batch-size", "2", "--steps", "2"]),
        "no step had enough readable samples",
    );
    assert!(
        snapshot(&run) == before,
        "a failed run changed {}",
        run.display()
    );
    let o = tuwen_in(
        &s.0,
        &[
            "train",
            "mae",
            "--data",
            data.to_str().unwrap(),
            "--out",
            &s.s("new"),
            "--steps",
            "2",
            "--batch-size",
            "2",
        ],
    );
    fails(&o, "no step had enough readable samples");
    let classes = s.join("classes");
    for c in ["a", "b"] {
        std::fs::create_dir_all(classes.join(c)).unwrap();
        std::fs::write(classes.join(c).join("x.png"), b"junk").unwrap();
    }
    let o = tuwen_in(
        &s.0,
        &[
            "train",
            "classifier",
            "--data",
            classes.to_str().unwrap(),
            "--arch",
            "vit-ti16",
            "--image-size",
            "32",
            "--out",
            &s.s("new"),
            "--steps",
            "2",
            "--batch-size",
            "2",
        ],
    );
    fails(&o, "no step had enough readable samples");
    assert!(!s.join("new").exists(), "a failed run left a folder");
    let leftovers: Vec<_> = std::fs::read_dir(&s.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".tuwen-staging")
        })
        .collect();
    assert!(leftovers.is_empty(), "scratch folders left behind");
}

#[test]
fn outputs_never_replace_inputs() {
    let s = Scratch::new("overwrite");
    let clip = s.copy_fixture("clip-tiny", "clip");
    let mae = s.copy_fixture("vit-mae-odd", "mae");
    let vit = s.copy_fixture("vit-tiny", "vit");
    std::fs::copy(image("chelsea_32.png"), s.join("in.png")).unwrap();
    let data = small_set(&s.0, 4);
    std::os::unix::fs::symlink(s.join("in.png"), s.join("link.png")).unwrap();
    let before = snapshot(&s.0);
    let o = tuwen_in(
        &s.0,
        &[
            "embed",
            "--model",
            clip.to_str().unwrap(),
            "--image",
            &s.s("in.png"),
            "--out",
            clip.join("model.safetensors").to_str().unwrap(),
        ],
    );
    fails(&o, "would replace the input");
    let o = tuwen_in(
        &s.0,
        &[
            "eval",
            "classify",
            "--model",
            vit.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--confusion",
            data.to_str().unwrap(),
        ],
    );
    fails(&o, "would replace the input");
    for out in ["in.png", "link.png"] {
        let o = tuwen_in(
            &s.0,
            &[
                "reconstruct",
                "--model",
                mae.to_str().unwrap(),
                "--image",
                &s.s("in.png"),
                "--out",
                &s.s(out),
            ],
        );
        fails(&o, "would replace the input");
    }
    assert!(snapshot(&s.0) == before, "a refused command changed a file");
    // --json alone writes no picture, in reconstruct as in eval classify.
    let cats = s.join("cats.csv");
    std::fs::write(&cats, "filepath,label\nin.png,tabby cat\n").unwrap();
    let o = tuwen_in(
        &s.0,
        &[
            "eval",
            "classify",
            "--model",
            vit.to_str().unwrap(),
            "--data",
            cats.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(&cats).unwrap();
    let o = tuwen_in(
        &s.0,
        &[
            "reconstruct",
            "--model",
            mae.to_str().unwrap(),
            "--image",
            &s.s("in.png"),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(snapshot(&s.0) == before, "reconstruct --json wrote a file");
    // A mask that hides every patch is refused as train mae refuses it.
    let o = tuwen_in(
        &s.0,
        &[
            "reconstruct",
            "--model",
            mae.to_str().unwrap(),
            "--image",
            &s.s("in.png"),
            "--mask-ratio",
            "0.97",
            "--json",
        ],
    );
    fails(&o, "leaves no visible patch");
}

#[test]
fn huge_configs_and_flags_are_refused_before_anything_is_built() {
    let s = Scratch::new("configs");
    let img = image("chelsea_32.png");
    let patch = |fixture: &str, name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = s.copy_fixture(fixture, name);
        let path = dir.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(&path, cfg.to_string()).unwrap();
        dir.to_str().unwrap().to_string()
    };
    let deep = patch("vit-tiny", "deep", &|c| {
        c["num_hidden_layers"] = 1_000_000.into()
    });
    fails(
        &tuwen_in(&s.0, &["classify", "--model", &deep, "--image", &img]),
        "num_hidden_layers 1000000",
    );
    let deep = patch("efficientnet-odd", "effdeep", &|c| {
        c["depth_coefficient"] = 1e6.into()
    });
    fails(
        &tuwen_in(&s.0, &["classify", "--model", &deep, "--image", &img]),
        "depth_coefficient",
    );
    let wide = patch("clip-tiny", "wide", &|c| {
        c["vision_config"]["image_size"] = (1u64 << 20).into()
    });
    fails(
        &tuwen_in(&s.0, &["embed", "--model", &wide, "--image", &img]),
        "image_size",
    );
    fails(
        &tuwen_in(
            &s.0,
            &["info", "--arch", "vit-b16", "--num-labels", "1000000000"],
        ),
        "--num-labels",
    );
    fails(
        &tuwen_in(
            &s.0,
            &["info", "--arch", "efficientnet-custom", "--depth", "1e6"],
        ),
        "depth_coefficient",
    );
    for (width, says) in [("1e300", "beyond any model"), ("inf", "positive finite")] {
        let o = tuwen_in(
            &s.0,
            &["info", "--arch", "efficientnet-custom", "--width", width],
        );
        fails(&o, says);
    }
    let squeeze = patch("efficientnet-odd", "squeeze", &|c| {
        c["squeeze_expansion_ratio"] = 1e300.into()
    });
    let o = tuwen_in(&s.0, &["classify", "--model", &squeeze, "--image", &img]);
    fails(&o, "squeeze_expansion_ratio");
    fails(
        &tuwen_in(&s.0, &["--threads", "100000", "water", "1", "2"]),
        "--threads 100000",
    );

    // Counts past 64 bits are an error, not a wrapped number: FLOPs are never fewer than MACs.
    let huge = patch("vit-tiny", "huge", &|c| {
        c["num_hidden_layers"] = 1024.into();
        c["hidden_size"] = 131_072.into();
        c["num_attention_heads"] = 128.into();
        c["image_size"] = 16_384.into();
        c["patch_size"] = 16.into();
    });
    fails(&tuwen_in(&s.0, &["info", "--model", &huge]), "64-bit");
    let o = tuwen_in(
        &s.0,
        &[
            "info",
            "--arch",
            "efficientnet-custom",
            "--resolution",
            "16384",
            "--width",
            "20",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["flops"].as_u64().unwrap() == 2 * v["macs"].as_u64().unwrap(),
        "{v}"
    );

    // Areas past u64 are printed exactly in JSON.
    let max = u64::MAX.to_string();
    let o = tuwen_in(&s.0, &["water", "--json", &max, &max, &max]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("{{\"max_area\":{}}}", 2 * u64::MAX as u128)
    );
}

#[test]
fn misleading_messages_and_silently_accepted_flags() {
    let s = Scratch::new("messages");
    let img = image("chelsea_32.png");
    // An OS error is said once.
    let vit = fixtures().join("vit-tiny");
    let o = tuwen_in(
        &s.0,
        &[
            "classify",
            "--model",
            vit.to_str().unwrap(),
            "--image",
            &s.s("missing.png"),
        ],
    );
    fails(&o, "No such file");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr)
            .matches("No such file")
            .count(),
        1
    );
    // A link loop says so, not "no such folder".
    std::os::unix::fs::symlink(s.join("loop"), s.join("loop")).unwrap();
    fails(
        &tuwen_in(
            &s.0,
            &["classify", "--model", &s.s("loop"), "--image", &img],
        ),
        "symbolic links",
    );
    // A folder named model.safetensors is a folder, not a short file.
    let m = s.join("m");
    std::fs::create_dir_all(m.join("model.safetensors")).unwrap();
    std::fs::copy(vit.join("config.json"), m.join("config.json")).unwrap();
    fails(
        &tuwen_in(
            &s.0,
            &["classify", "--model", m.to_str().unwrap(), "--image", &img],
        ),
        "a folder, not a safetensors file",
    );

    // Files that an editor saved with a UTF-8 byte-order mark read as without it.
    std::fs::write(s.join("heights.txt"), "\u{feff}1 8 6 2 5 4 8 3 7\n").unwrap();
    let o = tuwen_in(&s.0, &["water", "--file", &s.s("heights.txt")]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "49",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bom = s.copy_fixture("vit-tiny", "bom");
    for f in ["config.json", "preprocessor_config.json"] {
        let text = std::fs::read_to_string(bom.join(f)).unwrap();
        std::fs::write(bom.join(f), format!("\u{feff}{text}")).unwrap();
    }
    let o = tuwen_in(
        &s.0,
        &[
            "classify",
            "--model",
            bom.to_str().unwrap(),
            "--image",
            &img,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let classes = s.join("classes");
    for c in ["cat", "dog"] {
        std::fs::create_dir_all(classes.join(c)).unwrap();
        for i in 0..2 {
            std::fs::copy(&img, classes.join(c).join(format!("{i}.png"))).unwrap();
        }
    }
    let o = tuwen_in(
        &s.0,
        &[
            "train",
            "clip",
            "--data",
            classes.to_str().unwrap(),
            "--out",
            &s.s("run"),
            "--caption-template",
            "a photo",
            "--steps",
            "1",
            "--batch-size",
            "2",
        ],
    );
    fails(&o, "--caption-template");
    let o = tuwen_in(
        &s.0,
        &[
            "train",
            "siglip",
            "--data",
            classes.to_str().unwrap(),
            "--out",
            &s.s("run"),
            "--loss",
            "sigmoid-chunked",
            "--loss-chunks",
            "0",
            "--steps",
            "1",
            "--batch-size",
            "2",
        ],
    );
    fails(&o, "--loss-chunks must be at least 1");
    assert!(!s.join("run").exists());
}

#[test]
fn saved_weights_are_readable_like_every_other_file() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("modes");
    let o = tuwen_in(
        &s.0,
        &[
            "convert",
            "--model",
            fixtures().join("vit-tiny").to_str().unwrap(),
            "--out",
            &s.s("out"),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mode = |f: &str| {
        std::fs::metadata(s.join("out").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("model.safetensors"), mode("config.json"));
    assert_ne!(mode("model.safetensors"), 0o600);
}
