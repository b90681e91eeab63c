//! A synthetic byte-level BPE tokenizer of any vocabulary size, in HF `tokenizer.json` form.
//!
//! The 256 byte symbols (GPT-2's byte-to-unicode map) come first; then merges, generated from
//! the seed, build letter strings (`ab`, `Ġword`: a word with its leading space, as the
//! Qwen2 pre-tokenizer splits text) until the vocabulary is full; a handful of whitespace merges
//! (`ĠĠ`, `ĊĊ`) come first. The pre-tokenizer is Qwen2's regex then `ByteLevel`, the decoder
//! `ByteLevel`, no post-processor (no special token is added on encode). Every string of
//! bytes encodes (byte fallback is structural: all 256 bytes are tokens). A merge whose
//! inputs never meet side by side under the earlier merges is never applied, so some long
//! tokens are never produced; [`reachable_share`] measures how many are.

use super::random_view::mix64;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

/// Qwen2's pre-tokenizer split pattern (from its `tokenizer.json`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Longest generated token, in characters.
const MAX_CHARS: usize = 14;

/// GPT-2's byte-to-unicode map: the character byte `b` is written as.
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('?')
}

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = mix64(self.0);
        self.0
    }
    /// An index below `n`, biased towards small ones (earlier, shorter tokens).
    fn early(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * u) * n as f64) as usize % n.max(1)
    }
}

/// `tokenizer.json` with `specials` (id, content) and `len` tokens in all, from `seed`.
///
/// `len` must leave room for the 256 byte tokens beside the specials.
pub fn tokenizer_json(len: usize, specials: &[(u32, &str)], seed: u64) -> Result<Value, String> {
    if len < 256 + specials.len() {
        return Err(format!(
            "a byte-level BPE needs at least {} tokens, asked for {len}",
            256 + specials.len()
        ));
    }
    if let Some((id, s)) = specials.iter().find(|(id, _)| *id as usize >= len) {
        return Err(format!("special token {s} id {id} is outside 0..{len}"));
    }
    let regular = len - specials.len();
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut known: HashSet<String> = tokens.iter().cloned().collect();
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut push = |a: &str, b: &str, tokens: &mut Vec<String>, known: &mut HashSet<String>| {
        let t = format!("{a}{b}");
        if known.insert(t.clone()) {
            merges.push((a.to_string(), b.to_string()));
            tokens.push(t);
            true
        } else {
            false
        }
    };
    for (a, b) in [("Ġ", "Ġ"), ("Ċ", "Ċ"), ("ĠĠ", "ĠĠ"), ("ĉ", "ĉ")] {
        if tokens.len() < regular {
            push(a, b, &mut tokens, &mut known);
        }
    }
    // Letters in rough English frequency, lower case three times as likely as upper.
    let lower: Vec<String> = "etaoinshrdlcumwfgypbvkjxqz"
        .chars()
        .map(String::from)
        .collect();
    let upper: Vec<String> = lower.iter().map(|s| s.to_uppercase()).collect();
    let mut words: Vec<String> = Vec::new(); // letters only, ≥ 2 chars
    let mut spaced: Vec<String> = vec!["Ġ".into()]; // "Ġ" + letters
    let mut g = Gen(seed ^ 0x0B9E_70C3);
    let letter = |g: &mut Gen| {
        let r = g.next();
        let pool = if r.is_multiple_of(4) { &upper } else { &lower };
        pool[g.early(pool.len() * 2) % pool.len()].clone()
    };
    let mut misses = 0u64;
    while tokens.len() < regular {
        let r = g.next() % 8;
        let right = if r < 3 || words.is_empty() {
            letter(&mut g)
        } else {
            words[g.early(words.len())].clone()
        };
        let (left, is_spaced) = match g.next() % 5 {
            0 | 1 => (spaced[g.early(spaced.len())].clone(), true),
            2 if !words.is_empty() => (words[g.early(words.len())].clone(), false),
            _ => (letter(&mut g), false),
        };
        if left.chars().count() + right.chars().count() > MAX_CHARS {
            continue;
        }
        if push(&left, &right, &mut tokens, &mut known) {
            let t = format!("{left}{right}");
            if is_spaced {
                spaced.push(t)
            } else {
                words.push(t)
            }
        } else {
            misses += 1;
            if misses > 1 << 28 {
                return Err(format!("could not generate {regular} distinct tokens"));
            }
        }
    }
    // Ids: specials where asked, regular tokens in creation order in the rest.
    let special_ids: HashSet<u32> = specials.iter().map(|(id, _)| *id).collect();
    let mut vocab = Map::new();
    let mut next = 0u32;
    for t in tokens {
        while special_ids.contains(&next) {
            next += 1;
        }
        vocab.insert(t, Value::from(next));
        next += 1;
    }
    let added: Vec<Value> = specials
        .iter()
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                            "trim_offsets": false, "use_regex": false});
    let merges: Vec<Value> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

/// `tokenizer_config.json` for `transformers.AutoTokenizer` (a fast tokenizer over
/// `tokenizer.json`).
pub fn tokenizer_config(specials: &[(u32, &str)], bos: u32, eos: u32, max_len: usize) -> Value {
    let name = |id: u32| {
        specials
            .iter()
            .find(|(i, _)| *i == id)
            .map_or(Value::Null, |(_, s)| Value::from(*s))
    };
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(bos),
        "eos_token": name(eos),
        "pad_token": name(bos),
        "unk_token": null,
        "add_bos_token": false,
        "add_eos_token": false,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": false,
    })
}

/// Share of the regular tokens of `tok` that encode back to themselves from their own text.
pub fn reachable_share(tok: &tokenizers::Tokenizer) -> f64 {
    let vocab = tok.get_vocab(false);
    let (mut yes, mut all) = (0u64, 0u64);
    for (_, id) in vocab {
        let Ok(text) = tok.decode(&[id], false) else {
            continue;
        };
        all += 1;
        if tok
            .encode(text.as_str(), false)
            .is_ok_and(|e| e.get_ids() == [id])
        {
            yes += 1;
        }
    }
    if all == 0 {
        0.0
    } else {
        yes as f64 / all as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(len: usize, seed: u64) -> tokenizers::Tokenizer {
        let json = tokenizer_json(len, &[(len as u32 - 1, "<|end|>")], seed).expect("json");
        tokenizers::Tokenizer::from_bytes(json.to_string()).expect("tokenizers loads it")
    }

    #[test]
    fn vocabulary_has_the_asked_size_and_a_measured_reachable_share() {
        let tok = load(2000, 5);
        assert_eq!(tok.get_vocab_size(true), 2000);
        assert_eq!(tok.get_vocab_size(false), 1999);
        let share = reachable_share(&tok);
        // The 256 byte tokens are always produced; most merges are too.
        assert!(share > 256.0 / 1999.0 && share <= 1.0, "share {share}");
        println!("reachable share at 2000 tokens: {share:.3}");
    }

    #[test]
    fn too_small_a_vocabulary_or_a_special_outside_it_is_refused() {
        assert!(tokenizer_json(200, &[], 1).is_err());
        assert!(tokenizer_json(300, &[(300, "<s>")], 1).is_err());
    }

    #[test]
    fn byte_chars_are_gpt2s() {
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(byte_char(b'a'), 'a');
        let all: HashSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(all.len(), 256);
    }
}
