//! Decoding for every autoregressive model in tuwen: greedy search, beam search and sampling,
//! with transformers' `generate` semantics (its logits processors, stopping, padding and
//! output lengths), over any [`Decoder`] that keeps its own key/value cache, so that each new
//! token costs one incremental step.

use crate::data::shapes::SplitMix64;
use crate::{Error, Result};

/// A model that scores the next token. It owns a per-row state (its key/value cache): `step`
/// feeds each row's new tokens (the whole prompt first, then one token at a time) and returns
/// each row's logits for the token after them.
pub trait Decoder {
    /// The cache of every row.
    type State;
    /// Logits `[rows][vocab]` of the next token after `tokens` (`[rows][n]`, the tokens not
    /// yet seen), updating `state`.
    fn step(&self, tokens: &[Vec<i64>], state: &mut Self::State) -> Result<Vec<Vec<f32>>>;
    /// Keeps the rows `rows` of `state`, in that order (beam search reorders its beams).
    fn select(&self, state: &mut Self::State, rows: &[usize]) -> Result<()>;
}

/// Sampling instead of search: transformers' `do_sample=True` with its warpers.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Divides the logits (1: unchanged).
    pub temperature: f64,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f64,
    /// Seed of the draws.
    pub seed: u64,
}

/// How to decode.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Tokens to add at most.
    pub max_new_tokens: usize,
    /// The end token is suppressed until this many tokens are new.
    pub min_new_tokens: usize,
    /// Beams (1: greedy search or sampling).
    pub num_beams: usize,
    /// Beam scores are divided by (generated length)^length_penalty.
    pub length_penalty: f64,
    /// Beam search stops once `num_beams` hypotheses are finished (true), or when no running
    /// beam can beat the finished ones by transformers' heuristic (false).
    pub early_stopping: bool,
    /// transformers' `repetition_penalty` (1: none).
    pub repetition_penalty: f64,
    /// Sampling (greedy or beam search when `None`).
    pub sampling: Option<Sampling>,
    /// The end token.
    pub eos_token_id: i64,
    /// Padding after a row's end.
    pub pad_token_id: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_new_tokens: 20,
            min_new_tokens: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: false,
            repetition_penalty: 1.0,
            sampling: None,
            eos_token_id: 102,
            pad_token_id: 0,
        }
    }
}

impl Settings {
    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if self.num_beams == 0 {
            return bad("--beams must be at least 1".into());
        }
        if self.max_new_tokens == 0 {
            return bad("--max-new-tokens must be at least 1".into());
        }
        if self.sampling.is_some() && self.num_beams > 1 {
            return bad("sampling and beam search do not mix: choose one".into());
        }
        if !self.length_penalty.is_finite() {
            return bad("the length penalty must be a finite number".into());
        }
        if self.min_new_tokens > self.max_new_tokens {
            return bad(format!(
                "--min-new-tokens {} is more than --max-new-tokens {}",
                self.min_new_tokens, self.max_new_tokens
            ));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("the repetition penalty must be positive".into());
        }
        if let Some(s) = &self.sampling {
            if !(s.temperature > 0.0 && s.temperature.is_finite()) {
                return bad("--temperature must be positive".into());
            }
            if !(s.top_p > 0.0 && s.top_p <= 1.0) {
                return bad("--top-p must be in (0, 1]".into());
            }
        }
        Ok(())
    }
}

/// Generates after each prompt row (all rows of one length) and returns the full sequences,
/// prompt included, as transformers' `generate` returns them: rows that end early are padded to
/// the longest.
pub fn generate<D: Decoder>(
    model: &D,
    mut state: D::State,
    prompts: &[Vec<i64>],
    s: &Settings,
) -> Result<Vec<Vec<i64>>> {
    s.check()?;
    let Some(len) = prompts.first().map(Vec::len) else {
        return Ok(Vec::new());
    };
    if len == 0 || prompts.iter().any(|p| p.len() != len) {
        return Err(Error::InvalidInput(
            "prompts must be non-empty and of one length".into(),
        ));
    }
    if s.num_beams == 1 {
        search(model, &mut state, prompts, s)
    } else {
        beam_search(model, &mut state, prompts, s)
    }
}

/// Repetition penalty and the minimum length, as transformers' processors apply them.
fn process(logits: &mut [f32], seq: &[i64], new: usize, s: &Settings) {
    if s.repetition_penalty != 1.0 {
        let p = s.repetition_penalty as f32;
        let mut seen: Vec<i64> = seq.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            if let Some(x) = usize::try_from(t).ok().and_then(|t| logits.get_mut(t)) {
                *x = if *x < 0.0 { *x * p } else { *x / p };
            }
        }
    }
    if new < s.min_new_tokens
        && let Some(x) = usize::try_from(s.eos_token_id)
            .ok()
            .and_then(|t| logits.get_mut(t))
    {
        *x = f32::NEG_INFINITY;
    }
}

/// The index of the largest value (the first on ties, as `torch.argmax`).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Temperature, top-k and top-p (transformers' order), then a draw from the softmax.
fn draw(logits: &mut [f32], w: &Sampling, rng: &mut SplitMix64) -> usize {
    let t = w.temperature as f32;
    for x in logits.iter_mut() {
        *x /= t;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let mut keep = order.len();
    if w.top_k > 0 && w.top_k < keep {
        // transformers keeps every token scoring at least the k-th score (ties included).
        let kth = logits[order[w.top_k - 1]];
        keep = order.iter().take_while(|&&i| logits[i] >= kth).count();
    }
    let m = logits[order[0]];
    let probs: Vec<f64> = order[..keep]
        .iter()
        .map(|&i| f64::from(logits[i] - m).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    if w.top_p < 1.0 {
        // The smallest head whose mass reaches top_p (at least one token).
        let mut mass = 0.0;
        for (j, p) in probs.iter().enumerate() {
            mass += p / total;
            if mass >= w.top_p {
                keep = j + 1;
                break;
            }
        }
    }
    let total: f64 = probs[..keep].iter().sum();
    let mut u = f64::from(rng.unit()) * total;
    for (j, p) in probs[..keep].iter().enumerate() {
        u -= p;
        if u <= 0.0 {
            return order[j];
        }
    }
    order[keep - 1]
}

/// Greedy search or sampling (transformers' `_sample`): rows that ended get the pad token
/// until every row has ended or the length is reached.
fn search<D: Decoder>(
    model: &D,
    state: &mut D::State,
    prompts: &[Vec<i64>],
    s: &Settings,
) -> Result<Vec<Vec<i64>>> {
    let mut seqs: Vec<Vec<i64>> = prompts.to_vec();
    let mut open = vec![true; seqs.len()];
    let mut rng = SplitMix64::new(s.sampling.as_ref().map_or(0, |w| w.seed));
    let mut feed: Vec<Vec<i64>> = prompts.to_vec();
    for new in 0..s.max_new_tokens {
        let logits = model.step(&feed, state)?;
        for (r, mut l) in logits.into_iter().enumerate() {
            process(&mut l, &seqs[r], new, s);
            let token = match &s.sampling {
                Some(w) => draw(&mut l, w, &mut rng),
                None => argmax(&l),
            } as i64;
            let token = if open[r] { token } else { s.pad_token_id };
            seqs[r].push(token);
            feed[r] = vec![token];
            open[r] &= token != s.eos_token_id;
        }
        if !open.iter().any(|&o| o) {
            break;
        }
    }
    Ok(seqs)
}

/// Log-softmax of one row.
fn log_softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = v.iter().map(|&x| f64::from(x - m).exp()).sum::<f64>().ln() as f32 + m;
    v.iter().map(|&x| x - lse).collect()
}

/// One batch item's beam search state (transformers' `_beam_search`, vectorised there).
struct Beams {
    /// Running sequences and their summed log-probabilities.
    running: Vec<(Vec<i64>, f32)>,
    /// Finished hypotheses: sequence (with its end token) and length-normalised score.
    finished: Vec<(Vec<i64>, f32)>,
    /// Whether a running beam could still beat the finished ones.
    improvable: bool,
}

/// Beam search with transformers' rules: 2 × beams candidates per step; a candidate that ends
/// (the end token, or the length limit) is a hypothesis when it ranks among the first `beams`;
/// scores divided by the generated length to the `length_penalty`.
fn beam_search<D: Decoder>(
    model: &D,
    state: &mut D::State,
    prompts: &[Vec<i64>],
    s: &Settings,
) -> Result<Vec<Vec<i64>>> {
    let (k, prompt_len) = (s.num_beams, prompts[0].len());
    let max_len = prompt_len + s.max_new_tokens;
    // Every beam starts as the prompt; all but the first start at -1e9 so that the first step
    // expands one beam only.
    let mut items: Vec<Beams> = prompts
        .iter()
        .map(|p| Beams {
            running: (0..k)
                .map(|j| (p.clone(), if j == 0 { 0.0 } else { -1e9 }))
                .collect(),
            finished: Vec::new(),
            improvable: true,
        })
        .collect();
    let mut feed: Vec<Vec<i64>> = prompts.iter().flat_map(|p| vec![p.clone(); k]).collect();
    let mut cur = prompt_len;
    while cur < max_len {
        let logits = model.step(&feed, state)?;
        let mut keep_rows = Vec::with_capacity(items.len() * k);
        let mut all_end = true;
        for (b, item) in items.iter_mut().enumerate() {
            // Candidates: (score, beam, token), best 2k over beams × vocabulary.
            let mut cands: Vec<(f32, usize, usize)> = Vec::new();
            for j in 0..k {
                let row = &logits[b * k + j];
                let mut lp = log_softmax(row);
                process(&mut lp, &item.running[j].0, cur - prompt_len, s);
                let base = item.running[j].1;
                cands.extend(lp.iter().enumerate().map(|(t, &x)| (x + base, j, t)));
            }
            // torch.topk's order: by score, ties by index (beam-major, then token); only the
            // best 2k are sorted.
            let order = |a: &(f32, usize, usize), b: &(f32, usize, usize)| {
                b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2)))
            };
            if cands.len() > 2 * k {
                cands.select_nth_unstable_by(2 * k - 1, order);
                cands.truncate(2 * k);
            }
            cands.sort_by(order);
            let ends = |t: usize| t as i64 == s.eos_token_id || cur + 1 >= max_len;
            all_end &= cands.iter().all(|c| ends(c.2));
            // Finished: the candidates among the first k that end, if the item can improve.
            let full = item.finished.len() >= k && s.early_stopping;
            if item.improvable && !full {
                for (rank, &(score, j, t)) in cands.iter().enumerate() {
                    if rank < k && ends(t) {
                        let mut seq = item.running[j].0.clone();
                        seq.push(t as i64);
                        // transformers: a Python float power, then an f32 division.
                        let norm = ((cur + 1 - prompt_len) as f64).powf(s.length_penalty) as f32;
                        item.finished.push((seq, score / norm));
                    }
                }
                item.finished.sort_by(|a, b| b.1.total_cmp(&a.1));
                item.finished.truncate(k);
            }
            // Running: the best k candidates that do not end (ending ones score -1e9).
            let mut next: Vec<(f32, usize, usize)> = cands
                .iter()
                .map(|&(sc, j, t)| (if ends(t) { sc - 1e9 } else { sc }, j, t))
                .collect();
            next.sort_by(|a, b| b.0.total_cmp(&a.0));
            next.truncate(k);
            let old = std::mem::take(&mut item.running);
            for &(score, j, t) in &next {
                let mut seq = old[j].0.clone();
                seq.push(t as i64);
                item.running.push((seq, score));
                keep_rows.push(b * k + j);
            }
            // transformers' heuristic: stop when the best running beam, normalised by the
            // current length, cannot beat the worst finished one.
            let len = (cur + 1 - prompt_len) as f64;
            let best_running = item.running[0].1 / len.powf(s.length_penalty) as f32;
            let worst_finished = if item.finished.len() >= k {
                item.finished
                    .iter()
                    .map(|f| f.1)
                    .fold(f32::INFINITY, f32::min)
            } else {
                -1e9
            };
            item.improvable &= best_running > worst_finished;
        }
        cur += 1;
        let done = items
            .iter()
            .all(|it| !it.improvable || (s.early_stopping && it.finished.len() >= k));
        if done || all_end || cur >= max_len {
            break;
        }
        model.select(state, &keep_rows)?;
        feed = items
            .iter()
            .flat_map(|it| {
                it.running
                    .iter()
                    .map(|r| vec![*r.0.last().expect("non-empty")])
            })
            .collect();
    }
    // The best hypothesis of each item, padded to the longest as transformers pads (with the
    // pad token, or the end token where the pad token is 0: its `pad or eos`).
    let fill = if s.pad_token_id != 0 {
        s.pad_token_id
    } else {
        s.eos_token_id
    };
    let best: Vec<Vec<i64>> = items
        .into_iter()
        .map(|it| {
            it.finished
                .into_iter()
                .next()
                .map(|f| f.0)
                .unwrap_or_default()
        })
        .collect();
    let longest = best.iter().map(Vec::len).max().unwrap_or(0);
    Ok(best
        .into_iter()
        .map(|mut seq| {
            seq.resize(longest, fill);
            seq
        })
        .collect())
}
