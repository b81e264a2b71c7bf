//! `tuwen embed --images DIR` on 2,000 images: it finishes, skips a corrupt file, and its peak
//! memory does not grow with the number of images (it streams in batches).
//! A test binary of its own, so that no other test's child processes enter the measurement.

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Peak resident memory (KiB) of the largest child process waited for so far.
fn children_max_rss_kib() -> i64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss
}

fn folder(n: usize, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tuwen-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = fixtures().join("images/chelsea_32.png");
    for i in 0..n {
        let sub = dir.join(format!("part{}", i / 500));
        std::fs::create_dir_all(&sub).unwrap();
        let dst = sub.join(format!("img{i:05}.png"));
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
    std::fs::write(
        dir.join("part0/corrupt.png"),
        b"\x89PNG\r\n\x1a\n truncated",
    )
    .unwrap();
    dir
}

fn embed(dir: &PathBuf) -> (String, usize) {
    let out = dir.join("emb.npy");
    let o = Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(["embed", "--model"])
        .arg(fixtures().join("clip-tiny"))
        .arg("--images")
        .arg(dir)
        .args(["--batch-size", "32", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let bytes = std::fs::read(&out).unwrap();
    let header = String::from_utf8_lossy(&bytes[..128]).into_owned();
    let n: usize = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (err, n)
}

#[test]
fn embeds_2000_images_with_flat_memory() {
    let small = folder(200, "embed-200");
    let (_, n) = embed(&small);
    assert_eq!(n, 200);
    let rss_200 = children_max_rss_kib();

    let large = folder(2000, "embed-2000");
    let (err, n) = embed(&large);
    assert_eq!(n, 2000);
    assert!(
        err.contains("embedded 2000 of 2001 images") && err.contains("1 skipped"),
        "{err}"
    );
    assert!(err.contains("corrupt.png"), "{err}");
    let rss_both = children_max_rss_kib();
    eprintln!("peak RSS: 200 images {rss_200} KiB, 2000 images <= {rss_both} KiB");
    // Ten times the images may not cost more than a little extra memory.
    assert!(
        rss_both < rss_200 + rss_200 / 4 + 16 * 1024,
        "{rss_200} -> {rss_both} KiB"
    );
    std::fs::remove_dir_all(&small).unwrap();
    std::fs::remove_dir_all(&large).unwrap();
}
