//! WebDataset shards: tar files whose members are grouped into samples by key
//! (`0001.jpg`, `0001.txt`, `0001.json`), read as a stream: shards in a seeded order each
//! epoch, samples through a shuffle buffer. Members are read one at a time, so besides the
//! shuffle buffer only the current sample is in memory. Brace patterns name shard ranges
//! (`shards-{0000..0099}.tar`). A damaged shard ends where it breaks; what came before is
//! kept and the damage counted as one skip. A stream's [`position`](ShardStream::position) is
//! a small JSON value; [`seek`](ShardStream::seek) returns to it reading only the samples then
//! in the shuffle buffer.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

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

/// The tar block size: members and their headers start on multiples of it.
const BLOCK: u64 = 512;

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

/// What the shards of a stream have cost: image bodies and bytes read from files.
#[derive(Debug, Default)]
struct Counters {
    images: AtomicU64,
    bytes: AtomicU64,
}

/// A shard file that counts the bytes read from it.
struct Counted {
    file: File,
    counters: Arc<Counters>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for Counted {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

/// A file seen from `base` on: a `tar::Archive` takes the positions its seeks return as its
/// own offsets, so one can start mid-file.
struct Window<'a> {
    inner: &'a mut BufReader<Counted>,
    base: u64,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let out_of_range = || io::Error::new(io::ErrorKind::InvalidInput, "seek out of range");
        self.pos = match to {
            // The archive skips unread bodies this way; within the buffer it costs nothing.
            SeekFrom::Current(d) => {
                let pos = self.pos.checked_add_signed(d).ok_or_else(out_of_range)?;
                self.inner.seek_relative(d)?;
                pos
            }
            SeekFrom::Start(n) => {
                let abs = self.base.checked_add(n).ok_or_else(out_of_range)?;
                self.inner.seek(SeekFrom::Start(abs))?;
                n
            }
            SeekFrom::End(_) => {
                let abs = self.inner.seek(to)?;
                abs.checked_sub(self.base).ok_or_else(out_of_range)?
            }
        };
        Ok(self.pos)
    }
}

/// The members of one key: the image and the caption found among them.
struct Group {
    key: String,
    image: Option<Vec<u8>>,
    caption: Option<String>,
}

impl Group {
    /// The sample, if the group makes one: an image and a caption, or an image alone when
    /// `images_only`.
    fn into_sample(self, images_only: bool) -> Option<ShardSample> {
        let caption = match self.caption {
            Some(c) => c,
            None if images_only => String::new(),
            None => return None,
        };
        Some(ShardSample {
            key: self.key,
            image: self.image?,
            caption,
        })
    }
}

/// An open shard read one group of members at a time, from a byte offset where a member's
/// first header (a GNU long name or PAX record included) starts.
struct ShardCursor {
    file: BufReader<Counted>,
    counters: Arc<Counters>,
    /// The file's length: a member that would end past it is damage.
    len: u64,
    /// Where the next group starts.
    offset: u64,
    /// Where `file` stands.
    at: u64,
    /// The shard has ended, cleanly or at damage.
    done: bool,
    /// It ended at damage.
    damaged: bool,
}

impl ShardCursor {
    fn open(path: &Path, offset: u64, counters: &Arc<Counters>) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut file = BufReader::new(Counted {
            file,
            counters: counters.clone(),
        });
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        Ok(ShardCursor {
            file,
            counters: counters.clone(),
            len,
            offset,
            at: offset,
            done: false,
            damaged: false,
        })
    }

    /// Moves to the group starting at `offset` (a value `offset` had).
    fn restart_at(&mut self, offset: u64) {
        self.offset = offset;
        self.done = false;
        self.damaged = false;
    }

    /// The next group of consecutive members sharing a key; `None` at the end of the shard.
    /// Only the bodies the sample needs are read; the others are seeked over. At damage the
    /// group so far is returned and the shard ends.
    fn next_group(&mut self) -> Option<Group> {
        if self.done {
            return None;
        }
        if self.at != self.offset {
            let back = i64::try_from(self.offset).ok()? - i64::try_from(self.at).ok()?;
            if self.file.seek_relative(back).is_err() {
                (self.done, self.damaged) = (true, true);
                return None;
            }
            self.at = self.offset;
        }
        let base = self.offset;
        let mut archive = tar::Archive::new(Window {
            inner: &mut self.file,
            base,
            pos: 0,
        });
        let mut group: Option<Group> = None;
        // Where the last member seen ends (padding included) and where the next group starts,
        // both from `base`.
        let mut end = 0u64;
        let mut next = None;
        let mut damaged = false;
        match archive.entries_with_seek() {
            Err(_) => damaged = true,
            Ok(entries) => {
                for entry in entries {
                    let Ok(mut entry) = entry else {
                        damaged = true;
                        break;
                    };
                    let start = end;
                    let size = entry.size();
                    let kind = entry.header().entry_type();
                    // A sparse member's blocks do not follow from its size; WebDataset has none.
                    let member_end = size
                        .checked_next_multiple_of(BLOCK)
                        .and_then(|s| entry.raw_file_position().checked_add(s))
                        .filter(|e| base.checked_add(*e).is_some_and(|e| e <= self.len));
                    match member_end {
                        Some(e) if !kind.is_gnu_sparse() => end = e,
                        _ => {
                            damaged = true;
                            break;
                        }
                    }
                    if !kind.is_file() {
                        continue;
                    }
                    let (key, ext) = split_key(&String::from_utf8_lossy(&entry.path_bytes()));
                    match &group {
                        Some(g) if g.key != key => {
                            next = Some(start);
                            break;
                        }
                        Some(_) => {}
                        None => {
                            group = Some(Group {
                                key,
                                image: None,
                                caption: None,
                            })
                        }
                    }
                    let g = group.as_mut().expect("set above");
                    let is_image = IMAGE_EXTS.contains(&ext.as_str());
                    if !(is_image || ext == "txt" || (ext == "json" && g.caption.is_none())) {
                        continue;
                    }
                    let mut data = Vec::with_capacity(size.min(1 << 24) as usize);
                    if entry.read_to_end(&mut data).is_err() || data.len() as u64 != size {
                        damaged = true;
                        break;
                    }
                    if is_image {
                        self.counters.images.fetch_add(1, Ordering::Relaxed);
                        g.image = Some(data);
                    } else if ext == "txt" {
                        g.caption = Some(String::from_utf8_lossy(&data).trim().to_string());
                    } else if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data)
                        && let Some(c) = v
                            .get("caption")
                            .or_else(|| v.get("text"))
                            .and_then(|c| c.as_str())
                    {
                        g.caption = Some(c.to_string());
                    }
                }
            }
        }
        self.at = base + archive.into_inner().pos;
        match next {
            Some(n) => self.offset = base + n,
            None => (self.done, self.damaged) = (true, damaged),
        }
        group
    }
}

/// Reads the samples of one shard in order. Groups that do not make a sample (no image, or
/// no caption unless `images_only`) are counted in the second value, and so is a missing
/// shard; a damaged archive ends the list and counts once.
pub fn read_shard(path: &Path, images_only: bool) -> (Vec<ShardSample>, usize) {
    let Ok(mut cursor) = ShardCursor::open(path, 0, &Arc::default()) else {
        return (Vec::new(), 1);
    };
    let (mut samples, mut skipped) = (Vec::new(), 0);
    while let Some(group) = cursor.next_group() {
        match group.into_sample(images_only) {
            Some(s) => samples.push(s),
            None => skipped += 1,
        }
    }
    (samples, skipped + usize::from(cursor.damaged))
}

/// A sample in the shuffle buffer and where it was read.
struct Buffered {
    sample: ShardSample,
    shard: usize,
    offset: u64,
}

/// Where a group starts: a shard (index into the expanded pattern) and a byte offset.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Loc {
    shard: usize,
    offset: u64,
}

/// A buffered sample's place and key (checked when it is read again).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Held {
    shard: usize,
    offset: u64,
    key: String,
}

/// The serialised state of a [`ShardStream`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    version: u32,
    seed: u64,
    shards: usize,
    images_only: bool,
    epoch: u64,
    /// The generator's state, 16 hex digits (a JSON number may lose bits elsewhere).
    rng: String,
    order: Vec<usize>,
    current: Option<Loc>,
    buffer: Vec<Held>,
    produced_in_epoch: usize,
    skipped: usize,
}

const POSITION_VERSION: u32 = 1;

/// A stream of samples from shards, epoch after epoch: each epoch visits the shards in a
/// seeded order and passes samples through a shuffle buffer. The stream is a function of the
/// seed alone; [`position`](Self::position) and [`seek`](Self::seek) save and restore where
/// it stands.
pub struct ShardStream {
    shards: Vec<PathBuf>,
    seed: u64,
    buffer_size: usize,
    epoch: u64,
    order: VecDeque<usize>,
    /// The shard being read (its index) and where it stands.
    current: Option<(usize, Box<ShardCursor>)>,
    buffer: Vec<Buffered>,
    rng: SplitMix64,
    /// Samples and damaged or missing shards skipped so far.
    pub skipped: usize,
    produced_in_epoch: usize,
    /// Take images without captions too (for image-only training).
    pub images_only: bool,
    counters: Arc<Counters>,
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
            current: None,
            buffer: Vec::new(),
            rng: SplitMix64::new(seed),
            skipped: 0,
            produced_in_epoch: 0,
            images_only: false,
            counters: Arc::default(),
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
        self.current = None;
        self.buffer.clear();
        self.produced_in_epoch = 0;
    }

    /// The next sample of this epoch's shards, in shard order.
    fn pull(&mut self) -> Option<Buffered> {
        loop {
            let Some((shard, cursor)) = &mut self.current else {
                let shard = self.order.pop_front()?;
                match ShardCursor::open(&self.shards[shard], 0, &self.counters) {
                    Ok(c) => self.current = Some((shard, Box::new(c))),
                    Err(_) => self.skipped += 1,
                }
                continue;
            };
            let (shard, offset) = (*shard, cursor.offset);
            let group = cursor.next_group();
            if cursor.done {
                self.skipped += usize::from(cursor.damaged);
                self.current = None;
            }
            if let Some(group) = group {
                match group.into_sample(self.images_only) {
                    Some(sample) => {
                        return Some(Buffered {
                            sample,
                            shard,
                            offset,
                        });
                    }
                    None => self.skipped += 1,
                }
            }
        }
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
                return Ok(self.buffer.swap_remove(i).sample);
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

    /// Where the stream stands, as JSON for a checkpoint:
    /// `{"version": 1, "seed", "shards" (their count), "images_only", "epoch", "rng" (16 hex
    /// digits), "order" (shards left this epoch), "current": {"shard", "offset"} or null,
    /// "buffer": [{"shard", "offset", "key"}], "produced_in_epoch", "skipped"}`. Shards are
    /// indices into the expanded pattern, offsets bytes where a sample's first member starts.
    pub fn position(&self) -> serde_json::Value {
        let p = Position {
            version: POSITION_VERSION,
            seed: self.seed,
            shards: self.shards.len(),
            images_only: self.images_only,
            epoch: self.epoch,
            rng: format!("{:016x}", self.rng.state()),
            order: self.order.iter().copied().collect(),
            current: self.current.as_ref().map(|(shard, c)| Loc {
                shard: *shard,
                offset: c.offset,
            }),
            buffer: self
                .buffer
                .iter()
                .map(|b| Held {
                    shard: b.shard,
                    offset: b.offset,
                    key: b.sample.key.clone(),
                })
                .collect(),
            produced_in_epoch: self.produced_in_epoch,
            skipped: self.skipped,
        };
        serde_json::to_value(p).expect("a position is plain data")
    }

    /// Returns to a [`position`](Self::position) of a stream over the same shards and seed:
    /// the current shard is reopened at its offset and only the buffered samples are read
    /// again. An unreadable position, or one the shards no longer match, is an error and
    /// leaves the stream as it was.
    pub fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        let bad = |m: String| Error::InvalidInput(format!("stream position: {m}"));
        let p = Position::deserialize(position).map_err(|e| bad(e.to_string()))?;
        if p.version != POSITION_VERSION {
            return Err(bad(format!("version {} (known: 1)", p.version)));
        }
        if (p.shards, p.seed) != (self.shards.len(), self.seed) {
            return Err(bad(format!(
                "taken on {} shards with seed {}, this stream has {} with seed {}",
                p.shards,
                p.seed,
                self.shards.len(),
                self.seed
            )));
        }
        let rng = match u64::from_str_radix(&p.rng, 16) {
            Ok(s) if p.rng.len() == 16 => s,
            _ => return Err(bad(format!("rng {:?} is not 16 hex digits", p.rng))),
        };
        let n = self.shards.len();
        let mut places = (p.order.iter().copied())
            .chain(p.current.as_ref().map(|l| l.shard))
            .chain(p.buffer.iter().map(|h| h.shard));
        if let Some(s) = places.find(|&s| s >= n) {
            return Err(bad(format!("shard {s} of {n}")));
        }
        let open = |shard: usize, offset: u64| {
            let path = &self.shards[shard];
            let c =
                ShardCursor::open(path, offset, &self.counters).map_err(|e| Error::io(path, e))?;
            if !offset.is_multiple_of(BLOCK) || offset > c.len {
                return Err(bad(format!(
                    "offset {offset} is no member boundary of {}",
                    path.display()
                )));
            }
            Ok(c)
        };
        let current = match &p.current {
            Some(l) => Some((l.shard, Box::new(open(l.shard, l.offset)?))),
            None => None,
        };
        // Each shard is opened once and read forwards, skipping what lies between.
        let mut by_place: Vec<usize> = (0..p.buffer.len()).collect();
        by_place.sort_by_key(|&i| (p.buffer[i].shard, p.buffer[i].offset));
        let mut slots: Vec<Option<Buffered>> = (0..p.buffer.len()).map(|_| None).collect();
        let mut reader: Option<(usize, ShardCursor)> = None;
        for i in by_place {
            let h = &p.buffer[i];
            if reader.as_ref().is_none_or(|(s, _)| *s != h.shard) {
                reader = Some((h.shard, open(h.shard, h.offset)?));
            }
            let cursor = &mut reader.as_mut().expect("opened above").1;
            if !h.offset.is_multiple_of(BLOCK) || h.offset > cursor.len {
                return Err(bad(format!("offset {} is no member boundary", h.offset)));
            }
            cursor.restart_at(h.offset);
            let sample = cursor
                .next_group()
                .and_then(|g| g.into_sample(p.images_only))
                .filter(|s| s.key == h.key)
                .ok_or_else(|| {
                    bad(format!(
                        "{} holds no sample {:?} at byte {}",
                        self.shards[h.shard].display(),
                        h.key,
                        h.offset
                    ))
                })?;
            slots[i] = Some(Buffered {
                sample,
                shard: h.shard,
                offset: h.offset,
            });
        }
        self.epoch = p.epoch;
        self.rng = SplitMix64::new(rng);
        self.order = p.order.into();
        self.current = current;
        self.buffer = slots
            .into_iter()
            .map(|b| b.expect("every slot read"))
            .collect();
        self.produced_in_epoch = p.produced_in_epoch;
        self.skipped = p.skipped;
        self.images_only = p.images_only;
        Ok(())
    }
}

/// A tar archive (GNU format, long names as GNU long-name members) of `(name, bytes)` members.
pub fn tar_bytes(members: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, name, data.as_slice())
            .map_err(|e| Error::InvalidInput(format!("tar member {name}: {e}")))?;
    }
    tar.into_inner()
        .map_err(|e| Error::InvalidInput(format!("tar archive: {e}")))
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

    /// A fresh folder for one test.
    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tuwen-wds-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A group to write: key, image, caption.
    type GroupSpec = (String, Option<Vec<u8>>, Option<&'static str>);

    /// A shard of `(key, image, caption)` groups: a `.png` when there is an image, a `.txt`
    /// when there is a caption.
    fn shard(path: &Path, groups: &[GroupSpec]) {
        let mut members = Vec::new();
        for (key, image, caption) in groups {
            if let Some(img) = image {
                members.push((format!("{key}.png"), img.clone()));
            }
            if let Some(c) = caption {
                members.push((format!("{key}.txt"), c.as_bytes().to_vec()));
            }
        }
        std::fs::write(path, tar_bytes(&members).unwrap()).unwrap();
    }

    /// `n` captioned groups `{tag}/{i}` whose images are `size` bytes.
    fn groups(tag: &str, n: usize, size: usize) -> Vec<GroupSpec> {
        (0..n)
            .map(|i| {
                let mut img = format!("{tag}{i:05}").into_bytes();
                img.resize(size.max(img.len()), b'.');
                (format!("{tag}/{i:05}"), Some(img), Some("a caption"))
            })
            .collect()
    }

    fn take(s: &mut ShardStream, n: usize) -> Vec<(String, Vec<u8>, String)> {
        (0..n)
            .map(|_| {
                let x = s.next_sample().unwrap();
                (x.key, x.image, x.caption)
            })
            .collect()
    }

    #[test]
    fn a_position_resumes_the_stream() {
        let dir = tmp("resume");
        let mut a = groups("a", 5, 700);
        a.insert(2, ("a/nocap".into(), Some(b"x".to_vec()), None));
        shard(&dir.join("s-0.tar"), &a);
        shard(&dir.join("s-1.tar"), &groups("b", 4, 10));
        // s-2 is missing.
        shard(&dir.join("s-3.tar"), &groups("c", 6, 1500));
        let pattern = dir.join("s-{0..3}.tar");
        let n = 15;
        let reference = take(&mut ShardStream::open(&pattern, 4, 7).unwrap(), 6 * n);
        assert_ne!(reference[..n], reference[n..2 * n], "epochs reshuffle");
        for k in [0, 1, 2, 7, 14, 15, 16, 22, 29, 31] {
            let mut a = ShardStream::open(&pattern, 4, 7).unwrap();
            take(&mut a, k);
            // Through text, as a checkpoint would keep it.
            let pos: serde_json::Value = serde_json::from_str(&a.position().to_string()).unwrap();
            if k == 16 {
                assert_eq!(pos["epoch"], 1);
                assert!(pos["current"].is_object(), "mid-shard: {pos}");
                // The buffer refills before a draw, so one short of its size after.
                assert_eq!(pos["buffer"].as_array().unwrap().len(), 3, "{pos}");
            }
            let mut b = ShardStream::open(&pattern, 4, 7).unwrap();
            b.seek(&pos).unwrap();
            assert_eq!(b.position(), pos);
            let (ra, rb) = (take(&mut a, 3 * n), take(&mut b, 3 * n));
            assert_eq!(ra, rb, "resumed at {k}");
            assert_eq!(ra, reference[k..k + 3 * n], "resumed at {k}");
            assert_eq!(a.skipped, b.skipped);
            assert_eq!(a.position(), b.position());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn seeking_reads_only_the_buffered_samples() {
        let dir = tmp("seekcost");
        for k in 0..3 {
            shard(
                &dir.join(format!("s-{k}.tar")),
                &groups(&format!("s{k}"), 4000, 600),
            );
        }
        let pattern = dir.join("s-{0..2}.tar");
        let mut a = ShardStream::open(&pattern, 16, 3).unwrap();
        take(&mut a, 10_000);
        let used = a.counters.bytes.load(Ordering::Relaxed);
        assert!(a.counters.images.load(Ordering::Relaxed) >= 10_000);
        let pos = a.position();
        assert_eq!(pos["buffer"].as_array().unwrap().len(), 15);
        let mut b = ShardStream::open(&pattern, 16, 3).unwrap();
        b.seek(&pos).unwrap();
        let (images, bytes) = (
            b.counters.images.load(Ordering::Relaxed),
            b.counters.bytes.load(Ordering::Relaxed),
        );
        // One buffer fill of the file per buffered sample at most.
        assert_eq!(images, 15);
        assert!(
            bytes <= 15 * 8192,
            "{bytes} bytes read to seek ({used} to get there)"
        );
        assert!(used > 10_000 * 2048);
        assert_eq!(take(&mut a, 100), take(&mut b, 100));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Appends a regular member; a GNU header, so a name over 100 bytes gets a long-name member.
    fn append(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, name, data).unwrap();
    }

    /// Appends a PAX record naming the next member `path`.
    fn pax_path(tar: &mut tar::Builder<Vec<u8>>, path: &str) {
        // "LEN path=...\n" where LEN counts the whole record, its own digits included.
        let rest = format!(" path={path}\n");
        let mut len = rest.len() + 1;
        while len.to_string().len() + rest.len() != len {
            len += 1;
        }
        let record = format!("{len}{rest}");
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_path("PaxHeader/member").unwrap();
        h.set_size(record.len() as u64);
        h.set_cksum();
        tar.append(&h, record.as_bytes()).unwrap();
    }

    #[test]
    fn gnu_long_names_and_pax_paths() {
        let dir = tmp("names");
        let long = format!("{}/0001", "d".repeat(120));
        let paxed = format!("{}/0002", "p".repeat(150));
        let mut tar = tar::Builder::new(Vec::new());
        append(&mut tar, &format!("{long}.png"), b"img1");
        append(&mut tar, &format!("{long}.txt"), b"long name");
        pax_path(&mut tar, &format!("{paxed}.jpg"));
        append(&mut tar, "stand-in.jpg", b"img2");
        pax_path(&mut tar, &format!("{paxed}.json"));
        append(&mut tar, "stand-in.json", br#"{"text": "pax path"}"#);
        append(&mut tar, "0003.png", b"img3");
        append(&mut tar, "0003.txt", b"short");
        let bytes = tar.into_inner().unwrap();
        assert!(
            bytes.windows(13).any(|w| w == b"././@LongLink"),
            "a GNU long name"
        );
        std::fs::write(dir.join("n-0.tar"), &bytes).unwrap();
        let (samples, skipped) = read_shard(&dir.join("n-0.tar"), false);
        assert_eq!(skipped, 0);
        let got: Vec<(&str, &str)> = samples
            .iter()
            .map(|s| (s.key.as_str(), s.caption.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (long.as_str(), "long name"),
                (paxed.as_str(), "pax path"),
                ("0003", "short")
            ]
        );
        assert_eq!(samples[1].image, b"img2");
        // Positions land on the first header of a member (the long-name or PAX record).
        let pattern = dir.join("n-0.tar");
        for buffer in [1, 2] {
            let reference = take(&mut ShardStream::open(&pattern, buffer, 5).unwrap(), 9);
            for k in 0..3 {
                let mut a = ShardStream::open(&pattern, buffer, 5).unwrap();
                take(&mut a, k);
                let mut b = ShardStream::open(&pattern, buffer, 5).unwrap();
                b.seek(&a.position()).unwrap();
                assert_eq!(
                    take(&mut b, 6),
                    reference[k..k + 6],
                    "buffer {buffer}, k {k}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_shards_keep_what_came_before() {
        let dir = tmp("damage");
        let path = dir.join("d-0.tar");
        shard(&path, &groups("g", 4, 700));
        let good = std::fs::read(&path).unwrap();
        // Each group: image header + 2 blocks, caption header + 1 block.
        let group = 5 * 512;
        // Cut inside the third image's body.
        std::fs::write(&path, &good[..2 * group + 512 + 300]).unwrap();
        let (samples, skipped) = read_shard(&path, false);
        let keys: Vec<&str> = samples.iter().map(|s| s.key.as_str()).collect();
        assert_eq!((keys, skipped), (vec!["g/00000", "g/00001"], 1));
        // A broken header (checksum) in the third caption: its image alone stays for
        // image-only reading.
        let mut bad = good.clone();
        bad[2 * group + 3 * 512 + 10] ^= 0x55;
        std::fs::write(&path, &bad).unwrap();
        let (samples, skipped) = read_shard(&path, false);
        assert_eq!((samples.len(), skipped), (2, 2));
        let (samples, skipped) = read_shard(&path, true);
        assert_eq!((samples.len(), skipped), (3, 1));
        assert_eq!(samples[2].image, groups("g", 3, 700)[2].1.clone().unwrap());
        // Not a tar at all, and a missing shard: one skip each.
        std::fs::write(dir.join("junk.tar"), vec![7u8; 3000]).unwrap();
        assert_eq!(read_shard(&dir.join("junk.tar"), false).1, 1);
        assert_eq!(read_shard(&dir.join("none.tar"), false).1, 1);
        // A stream takes the good samples and counts the damage.
        std::fs::write(&path, &good[..2 * group + 512 + 300]).unwrap();
        shard(&dir.join("d-1.tar"), &groups("h", 3, 10));
        let mut s = ShardStream::open(&dir.join("d-{0..1}.tar"), 2, 1).unwrap();
        let mut keys: Vec<String> = take(&mut s, 5).into_iter().map(|x| x.0).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["g/00000", "g/00001", "h/00000", "h/00001", "h/00002"]
        );
        assert_eq!(s.skipped, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_position_is_an_error() {
        let dir = tmp("badpos");
        shard(&dir.join("b-0.tar"), &groups("a", 6, 10));
        shard(&dir.join("b-1.tar"), &groups("b", 6, 10));
        let pattern = dir.join("b-{0..1}.tar");
        let mut a = ShardStream::open(&pattern, 3, 2).unwrap();
        take(&mut a, 4);
        let pos = a.position();
        let mut s = ShardStream::open(&pattern, 3, 2).unwrap();
        let before = s.position();
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = pos.clone();
            f(&mut v);
            v
        };
        let bad = [
            serde_json::Value::Null,
            serde_json::json!("position"),
            serde_json::json!({}),
            edit(&|v| v["version"] = 2.into()),
            edit(&|v| v["seed"] = 3.into()),
            edit(&|v| v["shards"] = 5.into()),
            edit(&|v| v["rng"] = "not hex".into()),
            edit(&|v| v["rng"] = 17.into()),
            edit(&|v| v["epoch"] = (-1).into()),
            edit(&|v| v["order"] = serde_json::json!([9])),
            edit(&|v| v["extra"] = true.into()),
            edit(&|v| v["current"] = serde_json::json!({"shard": 0, "offset": 100})),
            edit(&|v| v["current"] = serde_json::json!({"shard": 0, "offset": u64::MAX})),
            edit(&|v| v["current"] = serde_json::json!({"shard": 1, "offset": 1u64 << 40})),
            edit(&|v| v["buffer"][0]["key"] = "elsewhere".into()),
            edit(&|v| v["buffer"][0]["offset"] = 512.into()),
            edit(&|v| v["buffer"][0]["shard"] = 2.into()),
            edit(&|v| v["buffer"][0] = serde_json::json!([0, 0])),
        ];
        for v in &bad {
            let e = s.seek(v).expect_err(&v.to_string());
            assert!(
                e.to_string().contains("position") || matches!(e, Error::Io { .. }),
                "{e}"
            );
            assert_eq!(s.position(), before, "a failed seek changes nothing");
        }
        s.seek(&pos).unwrap();
        assert_eq!(take(&mut s, 20), take(&mut a, 20));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
