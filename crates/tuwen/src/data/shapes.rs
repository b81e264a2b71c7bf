//! A synthetic captioned image set: one to three coloured shapes of several kinds, sizes and
//! positions per picture, with captions such as "a large red circle on the left and a small
//! blue square on the right" and attribute columns.
//!
//! Some colour-shape pairings never occur in training; the test split consists of single
//! shapes in those pairings (and in seen ones), so zero-shot accuracy on it measures whether a
//! model composes colour and shape rather than memorising pairs.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::hub::write_atomic;
use crate::{Error, Result};

/// Colour names and their RGB values.
pub const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 210, 40]),
    ("purple", [140, 60, 180]),
    ("orange", [245, 140, 30]),
];

/// Shape names.
pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "diamond"];

/// Colour-shape pairings held out of training (indices into [`COLORS`] and [`SHAPES`]).
pub const HELD_OUT: [(usize, usize); 4] = [(0, 2), (2, 0), (1, 1), (3, 3)];

/// Where a shape sits.
const POSITIONS: [(&str, f32, f32); 5] = [
    ("on the left", 0.25, 0.5),
    ("on the right", 0.75, 0.5),
    ("at the top", 0.5, 0.25),
    ("at the bottom", 0.5, 0.75),
    ("in the middle", 0.5, 0.5),
];

/// A small deterministic generator (SplitMix64), so a seed gives the same set everywhere.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The generator's state: `SplitMix64::new(g.state())` continues where `g` stands.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// One drawn shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeSpec {
    /// Index into [`COLORS`].
    pub color: usize,
    /// Index into [`SHAPES`].
    pub shape: usize,
    /// Large or small.
    pub large: bool,
    /// Index into the positions.
    pub position: usize,
}

impl ShapeSpec {
    /// "a large red circle on the left".
    pub fn phrase(&self) -> String {
        self.phrase_with(true, true)
    }

    /// The phrase with or without the size and the position, as captions vary.
    pub fn phrase_with(&self, size: bool, position: bool) -> String {
        let mut s = String::from("a ");
        if size {
            s.push_str(if self.large { "large " } else { "small " });
        }
        s.push_str(&self.label());
        if position {
            s.push(' ');
            s.push_str(POSITIONS[self.position].0);
        }
        s
    }

    /// "red circle": the label zero-shot evaluation uses.
    pub fn label(&self) -> String {
        format!("{} {}", COLORS[self.color].0, SHAPES[self.shape])
    }
}

fn inside(shape: usize, dx: f32, dy: f32, r: f32) -> bool {
    match shape {
        0 => dx * dx + dy * dy <= r * r,
        1 => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
        2 => {
            // Apex up: inside when below the two slanted edges and above the base.
            let (top, base) = (-r, r * 0.8);
            dy <= base && dy >= top && dx.abs() <= (dy - top) / (base - top) * r
        }
        _ => dx.abs() + dy.abs() <= r,
    }
}

/// Draws the shapes on a light, slightly noisy background.
pub fn draw(shapes: &[ShapeSpec], size: u32, rng: &mut SplitMix64) -> RgbImage {
    let shade = 225 + rng.below(25) as u8;
    let mut img = RgbImage::from_fn(size, size, |_, _| {
        let n = rng.below(9) as u8;
        Rgb([shade - n, shade - n, shade - n])
    });
    let s = size as f32;
    for sh in shapes {
        let (_, px, py) = POSITIONS[sh.position];
        let r = s * if sh.large { 0.17 } else { 0.09 } * (0.9 + 0.2 * rng.unit());
        let cx = px * s + (rng.unit() - 0.5) * s * 0.06;
        let cy = py * s + (rng.unit() - 0.5) * s * 0.06;
        let color = COLORS[sh.color].1;
        for y in 0..size {
            for x in 0..size {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                if inside(sh.shape, dx, dy, r) {
                    img.put_pixel(x, y, Rgb(color));
                }
            }
        }
    }
    img
}

fn held_out(color: usize, shape: usize) -> bool {
    HELD_OUT.contains(&(color, shape))
}

/// Random shapes at distinct positions, avoiding held-out pairings when `seen_only`.
fn sample(rng: &mut SplitMix64, count: usize, seen_only: bool) -> Vec<ShapeSpec> {
    let mut used = Vec::new();
    let mut out = Vec::new();
    while out.len() < count {
        let position = rng.below(POSITIONS.len());
        // Middle overlaps everything; only a single shape may take it.
        if used.contains(&position) || (count > 1 && position == 4) {
            continue;
        }
        let (color, shape) = (rng.below(COLORS.len()), rng.below(SHAPES.len()));
        if seen_only && held_out(color, shape) {
            continue;
        }
        used.push(position);
        out.push(ShapeSpec {
            color,
            shape,
            large: rng.below(2) == 0,
            position,
        });
    }
    out
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapesSummary {
    /// Training images.
    pub train: usize,
    /// Test images.
    pub test: usize,
    /// Test images whose pairing never occurs in training.
    pub test_held_out: usize,
}

/// Writes `n` training pictures and `n / 5` (at least 24) single-shape test pictures into
/// `out/images`, with `out/train.csv` and `out/test.csv` (columns `filepath, caption, label,
/// color, shape, size, position, shapes, held_out`; paths relative to the CSV).
pub fn generate(out: &Path, n: usize, size: u32, seed: u64) -> Result<ShapesSummary> {
    if !(1..=10_000_000).contains(&n) {
        return Err(Error::InvalidInput(format!(
            "--n {n} must be in 1..=10000000"
        )));
    }
    if !(16..=1024).contains(&size) {
        return Err(Error::InvalidInput(format!(
            "--size {size} must be in 16..=1024"
        )));
    }
    let images = out.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let mut rng = SplitMix64::new(seed);
    let header = "filepath,caption,label,color,shape,size,position,shapes,held_out\n";
    let mut write_split = |name: &str, count: usize, train: bool| -> Result<usize> {
        let mut csv = String::from(header);
        let mut held = 0;
        for i in 0..count {
            let k = if train { 1 + rng.below(3) } else { 1 };
            // Seen pairings everywhere; then half the test set gets a held-out one.
            let mut specs = sample(&mut rng, k, true);
            if !train && i % 2 == 0 {
                let (c, s) = HELD_OUT[(i / 2) % HELD_OUT.len()];
                specs[0].color = c;
                specs[0].shape = s;
            }
            let img = draw(&specs, size, &mut rng);
            let file = format!("images/{name}-{i:05}.png");
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| Error::InvalidInput(format!("cannot encode PNG: {e}")))?;
            write_atomic(&out.join(&file), &png)?;
            // Captions say more or less, as real ones do: size and position each appear
            // two times in three.
            let caption = specs
                .iter()
                .map(|sp| sp.phrase_with(rng.below(3) > 0, rng.below(3) > 0))
                .collect::<Vec<_>>()
                .join(" and ");
            let first = &specs[0];
            let is_held = held_out(first.color, first.shape);
            held += usize::from(is_held);
            csv.push_str(&format!(
                "{file},{caption},{},{},{},{},{},{},{}\n",
                first.label(),
                COLORS[first.color].0,
                SHAPES[first.shape],
                if first.large { "large" } else { "small" },
                POSITIONS[first.position].0,
                specs.len(),
                is_held
            ));
        }
        write_atomic(&out.join(format!("{name}.csv")), csv.as_bytes())?;
        Ok(held)
    };
    write_split("train", n, true)?;
    let test = (n / 5).max(24);
    let test_held_out = write_split("test", test, false)?;
    Ok(ShapesSummary {
        train: n,
        test,
        test_held_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_set_and_held_out_pairs_stay_out_of_training() {
        let a = std::env::temp_dir().join(format!("tuwen-shapes-a-{}", std::process::id()));
        let b = std::env::temp_dir().join(format!("tuwen-shapes-b-{}", std::process::id()));
        let sa = generate(&a, 60, 32, 7).unwrap();
        generate(&b, 60, 32, 7).unwrap();
        assert_eq!(sa.test, 24);
        assert_eq!(sa.test_held_out, 12);
        let train = std::fs::read_to_string(a.join("train.csv")).unwrap();
        assert_eq!(train, std::fs::read_to_string(b.join("train.csv")).unwrap());
        assert_eq!(
            std::fs::read(a.join("images/train-00007.png")).unwrap(),
            std::fs::read(b.join("images/train-00007.png")).unwrap()
        );
        for (c, s) in HELD_OUT {
            let pair = format!("{} {}", COLORS[c].0, SHAPES[s]);
            assert!(!train.contains(&pair), "{pair} in training captions");
        }
        let first = train.lines().nth(1).unwrap();
        assert!(first.starts_with("images/train-00000.png,a "), "{first}");
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn shapes_are_drawn_in_their_colour() {
        let mut rng = SplitMix64::new(1);
        let spec = ShapeSpec {
            color: 2,
            shape: 0,
            large: true,
            position: 4,
        };
        let img = draw(&[spec], 64, &mut rng);
        assert_eq!(img.get_pixel(32, 32).0, COLORS[2].1);
        assert_ne!(img.get_pixel(1, 1).0, COLORS[2].1);
    }
}
