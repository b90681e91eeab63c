//! Text of generated tokens as it becomes final: incremental detokenisation that holds back
//! an incomplete UTF-8 sequence and any tail that could still become a stop string.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Decodes generated tokens one at a time into text deltas, and finds stop strings.
///
/// Text is released only once it can no longer change: a token that ends inside a multi-byte
/// character waits for the rest, and a tail that is the beginning of a stop string waits
/// until it either completes the stop string (then everything from it on is dropped) or
/// cannot anymore.
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    stops: Vec<String>,
    /// Bytes of the decoded text already released.
    released: usize,
    /// Set once a stop string matched: the final text is cut there.
    stopped_at: Option<usize>,
}

impl TextStream {
    /// A stream that ends at the first of `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Self::default()
        }
    }

    /// Adds token `id`; returns the text that became final (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        if self.stopped_at.is_some() {
            return Ok(String::new());
        }
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        // Search from a little before what was released (a stop string may straddle it).
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let from = floor_char(&text, self.released.saturating_sub(longest));
        let hit = self
            .stops
            .iter()
            .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            let at = at.max(self.released);
            self.stopped_at = Some(at);
            let out = text[self.released.min(at)..at].to_string();
            self.released = at;
            return Ok(out);
        }
        // Hold back an unfinished character and any tail that starts a stop string.
        let mut end = text.len();
        if text.ends_with('\u{FFFD}') {
            end = text.len() - '\u{FFFD}'.len_utf8();
        }
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text[..end].ends_with(&s[..k]) {
                    end = end.min(text.len() - k);
                    break;
                }
            }
        }
        let end = floor_char(&text, end);
        if end <= self.released {
            return Ok(String::new());
        }
        let out = text[self.released..end].to_string();
        self.released = end;
        Ok(out)
    }

    /// The text held back at the end of generation (released once no more tokens come);
    /// empty after a stop string.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        if self.stopped_at.is_some() || self.ids.is_empty() {
            return Ok(String::new());
        }
        let text = tok.decode(&self.ids)?;
        let start = floor_char(&text, self.released.min(text.len()));
        let out = text[start..].to_string();
        self.released = text.len();
        Ok(out)
    }

    /// Whether a stop string matched.
    pub fn stopped(&self) -> bool {
        self.stopped_at.is_some()
    }

    /// The tokens pushed so far.
    pub fn tokens(&self) -> &[u32] {
        &self.ids
    }
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
