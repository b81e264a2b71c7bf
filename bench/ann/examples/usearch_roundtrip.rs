//! The integration snippet from README.md, runnable:
//! `cargo run --release --example usearch_roundtrip`
//! Builds an index of unit-norm Vec<f32> with u64 ids, saves it, reloads it (copy and mmap
//! view), searches, removes and re-adds an id.

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dim = 512;
    // toy data: ids 1000.., pseudo-random unit vectors
    let mut state = 42u64;
    let mut rnd = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let items: Vec<(u64, Vec<f32>)> = (0..2000u64)
        .map(|i| (1000 + i, unit((0..dim).map(|_| rnd()).collect())))
        .collect();

    // --- build
    let index = Index::new(&IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP, // distance = 1 - <a, b>; vectors must be unit norm
        quantization: ScalarKind::F32, // or F16 / BF16: half the memory, same recall here
        connectivity: 16,       // M
        expansion_add: 200,     // ef_construction
        expansion_search: 64,   // ef
        multi: false,           // one vector per key; adding a key twice is an error
    })?;
    index.reserve(items.len())?; // mandatory: add() fails beyond the reserved capacity
    for (id, v) in &items {
        index.add(*id, v)?; // &self: may be called from several threads
    }

    // --- search
    let m = index.search(&items[5].1, 10)?; // Matches { keys: Vec<u64>, distances: Vec<f32> }
    assert_eq!(m.keys[0], items[5].0);
    println!(
        "top-3 keys {:?}, cos {:?}",
        &m.keys[..3],
        m.distances[..3].iter().map(|d| 1.0 - d).collect::<Vec<_>>()
    );

    // --- persist and reload (one file)
    let path = std::env::temp_dir().join("usearch_roundtrip.usearch");
    let path = path.to_str().unwrap();
    index.save(path)?;
    let loaded = Index::restore(path)?; // reads the header, then load()s into RAM
    loaded.change_expansion_search(64); // set ef after a reload
    assert_eq!(loaded.size(), items.len());
    assert_eq!(loaded.search(&items[5].1, 10)?.keys, m.keys);
    let viewed = Index::restore_view(path)?; // memory-mapped, read-only, near-instant open
    assert_eq!(viewed.search(&items[5].1, 10)?.keys[0], items[5].0);

    // --- incremental update on the loaded index
    assert_eq!(loaded.remove(items[5].0)?, 1);
    assert!(!loaded.contains(items[5].0));
    loaded.reserve(loaded.size() + 1)?;
    loaded.add(items[5].0, &items[5].1)?;
    assert_eq!(loaded.search(&items[5].1, 1)?.keys[0], items[5].0);
    println!(
        "ok: {} vectors, {} bytes on disk",
        loaded.size(),
        std::fs::metadata(path).unwrap().len()
    );
    drop(viewed);
    std::fs::remove_file(path).ok();
    Ok(())
}
