//! WebDataset shards: tar files whose members are grouped into samples by key
//! (`0001.jpg`, `0001.txt`, `0001.json`), read as a stream: shards in a seeded order each
//! epoch, samples through a shuffle buffer. Brace patterns name shard ranges
//! (`shards-{0000..0099}.tar`). A damaged shard ends where it breaks; what came before is
//! kept and the rest counted as skipped.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::shapes::SplitMix64;
use crate::{Error, Result};

/// Expands `{a..b}` numeric ranges (zero-padded to the width of `a`) and `{x,y}` lists.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let Some(open) = pattern.find('{') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| Error::InvalidInput(format!("unclosed {{ in {pattern:?}")))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let items: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let bad = || Error::InvalidInput(format!("bad range {{{body}}} in {pattern:?}"));
        let (lo, hi): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if hi < lo || hi - lo > 1_000_000 {
            return Err(bad());
        }
        (lo..=hi)
            .map(|i| format!("{i:0width$}", width = a.len()))
            .collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let mut out = Vec::new();
    for rest in expand_braces(tail)? {
        for item in &items {
            out.push(format!("{head}{item}{rest}"));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `path` names WebDataset shards (a `.tar` file or a brace pattern of them).
pub fn is_shards(path: &Path) -> bool {
    let s = path.to_string_lossy();
    s.ends_with(".tar") || (s.contains('{') && s.contains(".tar"))
}

/// One sample of a shard: its key, the image file's bytes and the caption.
#[derive(Clone, Debug)]
pub struct ShardSample {
    /// The member name without its extension(s).
    pub key: String,
    /// The encoded image.
    pub image: Vec<u8>,
    /// From `.txt`, or the `caption`/`text` field of `.json`.
    pub caption: String,
}

const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// Reads tar members one at a time: `(name, bytes)`. Understands ustar names with prefixes,
/// GNU long names and PAX `path` records.
pub struct TarReader<R: Read> {
    inner: R,
    long_name: Option<String>,
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl<R: Read> TarReader<R> {
    /// A reader over tar bytes.
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            long_name: None,
        }
    }

    /// The next regular file, `None` at the end; an error when the archive is damaged.
    pub fn next_file(&mut self) -> std::result::Result<Option<(String, Vec<u8>)>, String> {
        loop {
            let mut header = [0u8; 512];
            match read_full(&mut self.inner, &mut header) {
                Ok(0) => return Ok(None),
                Ok(512) => {}
                Ok(_) => return Err("truncated tar header".into()),
                Err(e) => return Err(e.to_string()),
            }
            if header.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            // The checksum counts its own field as spaces.
            let sum: u64 = header
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            if octal(&header[148..156]) != Some(sum) {
                return Err("bad tar header checksum".into());
            }
            let size = octal(&header[124..136]).ok_or("bad tar member size")?;
            if size > 1 << 32 {
                return Err(format!("tar member of {size} bytes"));
            }
            let mut data = vec![0u8; size as usize];
            if read_full(&mut self.inner, &mut data).map_err(|e| e.to_string())? != data.len() {
                return Err("truncated tar member".into());
            }
            let pad = (512 - size % 512) % 512;
            let mut skip = vec![0u8; pad as usize];
            if read_full(&mut self.inner, &mut skip).map_err(|e| e.to_string())? != skip.len() {
                return Err("truncated tar padding".into());
            }
            let mut name = cstr(&header[0..100]);
            if &header[257..262] == b"ustar" {
                let prefix = cstr(&header[345..500]);
                if !prefix.is_empty() {
                    name = format!("{prefix}/{name}");
                }
            }
            match header[156] {
                b'L' => self.long_name = Some(cstr(&data)),
                b'x' => {
                    // PAX records: "LEN path=NAME\n".
                    let text = String::from_utf8_lossy(&data);
                    for rec in text.lines() {
                        if let Some((_, kv)) = rec.split_once(' ')
                            && let Some(p) = kv.strip_prefix("path=")
                        {
                            self.long_name = Some(p.to_string());
                        }
                    }
                }
                b'0' | 0 => {
                    let name = self.long_name.take().unwrap_or(name);
                    return Ok(Some((name, data)));
                }
                _ => self.long_name = None,
            }
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Splits a member name into the sample key and the extension WebDataset groups by: the key
/// is everything up to the first dot of the file name.
fn split_key(name: &str) -> (String, String) {
    let (dir, file) = match name.rfind('/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => ("", name),
    };
    match file.find('.') {
        Some(i) => (format!("{dir}{}", &file[..i]), file[i + 1..].to_lowercase()),
        None => (name.to_string(), String::new()),
    }
}

/// Reads the samples of one shard in order. Members that do not make a sample (no image, or no
/// caption unless `images_only`) are counted in the second value; a damaged archive ends the
/// list and counts once.
pub fn read_shard(path: &Path, images_only: bool) -> (Vec<ShardSample>, usize) {
    let mut samples = Vec::new();
    let mut skipped = 0;
    let Ok(file) = File::open(path) else {
        return (samples, 1);
    };
    let mut tar = TarReader::new(BufReader::new(file));
    let mut current: Option<(String, Option<Vec<u8>>, Option<String>)> = None;
    let mut finish = |cur: Option<(String, Option<Vec<u8>>, Option<String>)>,
                      samples: &mut Vec<ShardSample>| {
        if let Some((key, image, caption)) = cur {
            match (image, caption) {
                (Some(image), Some(caption)) => samples.push(ShardSample {
                    key,
                    image,
                    caption,
                }),
                (Some(image), None) if images_only => samples.push(ShardSample {
                    key,
                    image,
                    caption: String::new(),
                }),
                _ => skipped += 1,
            }
        }
    };
    loop {
        let (name, data) = match tar.next_file() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(_) => {
                finish(current.take(), &mut samples);
                return (samples, skipped + 1);
            }
        };
        let (key, ext) = split_key(&name);
        if current.as_ref().is_none_or(|c| c.0 != key) {
            finish(current.take(), &mut samples);
            current = Some((key, None, None));
        }
        let cur = current.as_mut().expect("set above");
        if IMAGE_EXTS.contains(&ext.as_str()) {
            cur.1 = Some(data);
        } else if ext == "txt" {
            cur.2 = Some(String::from_utf8_lossy(&data).trim().to_string());
        } else if ext == "json"
            && cur.2.is_none()
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data)
            && let Some(c) = v
                .get("caption")
                .or_else(|| v.get("text"))
                .and_then(|c| c.as_str())
        {
            cur.2 = Some(c.to_string());
        }
    }
    finish(current.take(), &mut samples);
    (samples, skipped)
}

/// A stream of samples from shards, epoch after epoch: each epoch visits the shards in a
/// seeded order and passes samples through a shuffle buffer. The stream is a function of the
/// seed alone, so skipping `n` samples lands where an earlier run stood after `n`.
pub struct ShardStream {
    shards: Vec<PathBuf>,
    seed: u64,
    buffer_size: usize,
    epoch: u64,
    order: VecDeque<usize>,
    pending: VecDeque<ShardSample>,
    buffer: Vec<ShardSample>,
    rng: SplitMix64,
    /// Samples and damaged shards skipped so far.
    pub skipped: usize,
    produced_in_epoch: usize,
    /// Take images without captions too (for image-only training).
    pub images_only: bool,
}

impl ShardStream {
    /// Shards named by `pattern` (brace ranges allowed); an error when none exists.
    pub fn open(pattern: &Path, buffer_size: usize, seed: u64) -> Result<Self> {
        let names = expand_braces(&pattern.to_string_lossy())?;
        let shards: Vec<PathBuf> = names.into_iter().map(PathBuf::from).collect();
        let missing: Vec<&PathBuf> = shards.iter().filter(|p| !p.is_file()).collect();
        if missing.len() == shards.len() {
            return Err(Error::InvalidInput(format!(
                "no shard of {} exists (first: {})",
                pattern.display(),
                shards[0].display()
            )));
        }
        let mut s = ShardStream {
            shards,
            seed,
            buffer_size: buffer_size.max(1),
            epoch: 0,
            order: VecDeque::new(),
            pending: VecDeque::new(),
            buffer: Vec::new(),
            rng: SplitMix64::new(seed),
            skipped: 0,
            produced_in_epoch: 0,
            images_only: false,
        };
        s.start_epoch(0);
        Ok(s)
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.rng = SplitMix64::new(self.seed ^ (epoch + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut order: Vec<usize> = (0..self.shards.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.below(i + 1));
        }
        self.order = order.into();
        self.pending.clear();
        self.buffer.clear();
        self.produced_in_epoch = 0;
    }

    fn pull(&mut self) -> Option<ShardSample> {
        while self.pending.is_empty() {
            let shard = self.order.pop_front()?;
            let (samples, skipped) = read_shard(&self.shards[shard], self.images_only);
            self.skipped += skipped;
            self.pending.extend(samples);
        }
        self.pending.pop_front()
    }

    /// The next sample.
    pub fn next_sample(&mut self) -> Result<ShardSample> {
        for _ in 0..2 {
            while self.buffer.len() < self.buffer_size {
                match self.pull() {
                    Some(s) => self.buffer.push(s),
                    None => break,
                }
            }
            if !self.buffer.is_empty() {
                let i = self.rng.below(self.buffer.len());
                self.produced_in_epoch += 1;
                return Ok(self.buffer.swap_remove(i));
            }
            if self.produced_in_epoch == 0 && self.epoch > 0 {
                break;
            }
            self.start_epoch(self.epoch + 1);
        }
        Err(Error::InvalidInput(
            "the shards hold no readable sample (image + .txt or .json caption)".into(),
        ))
    }
}

/// A ustar archive of `(name, bytes)` members (names up to 100 bytes).
pub fn tar_bytes(members: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (name, data) in members {
        if name.len() > 100 {
            return Err(Error::InvalidInput(format!(
                "tar member name too long: {name}"
            )));
        }
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// Writes captioned images as `shards` WebDataset shards `{prefix}-{0000..}.tar` in `dir`,
/// each sample a `.png`/`.jpg` (as the file is) and a `.txt`; returns the brace pattern.
pub fn write_shards(
    dir: &Path,
    prefix: &str,
    samples: &[super::captions::Sample],
    shards: usize,
) -> Result<PathBuf> {
    let shards = shards.clamp(1, samples.len().max(1));
    let per = samples.len().div_ceil(shards);
    for (k, chunk) in samples.chunks(per.max(1)).enumerate() {
        let mut members = Vec::new();
        for (i, s) in chunk.iter().enumerate() {
            let bytes = std::fs::read(&s.image).map_err(|e| Error::io(&s.image, e))?;
            let ext = s
                .image
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_else(|| "png".into());
            let key = format!("{:08}", k * per + i);
            members.push((format!("{key}.{ext}"), bytes));
            members.push((format!("{key}.txt"), s.caption.as_bytes().to_vec()));
        }
        let path = dir.join(format!("{prefix}-{k:04}.tar"));
        crate::hub::write_atomic(&path, &tar_bytes(&members)?)?;
    }
    let last = samples.len().div_ceil(per.max(1)).max(1) - 1;
    Ok(dir.join(format!("{prefix}-{{0000..{last:04}}}.tar")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_ranges_and_lists() {
        assert_eq!(
            expand_braces("s-{08..11}.tar").unwrap(),
            ["s-08.tar", "s-09.tar", "s-10.tar", "s-11.tar"]
        );
        assert_eq!(
            expand_braces("{a,b}-{0..1}").unwrap(),
            ["a-0", "a-1", "b-0", "b-1"]
        );
        assert!(expand_braces("s-{3..1}.tar").is_err());
        assert!(expand_braces("s-{1..2.tar").is_err());
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
    }

    #[test]
    fn shards_group_members_by_key_and_survive_damage() {
        let dir = std::env::temp_dir().join(format!("tuwen-wds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let members: Vec<(String, Vec<u8>)> = [
            ("a/0001.png", &b"img1"[..]),
            ("a/0001.txt", b"first caption\n"),
            ("a/0002.jpg", b"img2"),
            ("a/0002.json", br#"{"caption": "second"}"#),
            ("a/0003.jpg", b"no caption"),
            ("a/0004.txt", b"no image"),
        ]
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect();
        let good = tar_bytes(&members).unwrap();
        std::fs::write(dir.join("s-0.tar"), &good).unwrap();
        let (samples, skipped) = read_shard(&dir.join("s-0.tar"), false);
        assert_eq!(samples.len(), 2);
        assert_eq!(skipped, 2);
        assert_eq!(samples[0].key, "a/0001");
        assert_eq!(samples[0].caption, "first caption");
        assert_eq!(samples[1].image, b"img2");
        assert_eq!(samples[1].caption, "second");
        // Images alone count when captions are not needed.
        assert_eq!(read_shard(&dir.join("s-0.tar"), true).0.len(), 3);
        // Cut inside the third member: the first two samples stay, the damage counts once.
        std::fs::write(dir.join("s-1.tar"), &good[..512 * 9 + 100]).unwrap();
        let (samples, skipped) = read_shard(&dir.join("s-1.tar"), false);
        assert_eq!(samples.len(), 2);
        assert_eq!(skipped, 1);
        // A stream over both shards (and a missing one) cycles through epochs.
        let mut s = ShardStream::open(&dir.join("s-{0..2}.tar"), 3, 1).unwrap();
        let got: Vec<String> = (0..8).map(|_| s.next_sample().unwrap().caption).collect();
        assert_eq!(got.iter().filter(|c| *c == "second").count(), 4);
        let mut again = ShardStream::open(&dir.join("s-{0..2}.tar"), 3, 1).unwrap();
        let same: Vec<String> = (0..8)
            .map(|_| again.next_sample().unwrap().caption)
            .collect();
        assert_eq!(got, same, "a seed means one stream");
        assert!(ShardStream::open(&dir.join("none-{0..3}.tar"), 3, 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
