//! `TextStream` (incremental detokenization) against a decode of all ids by
//! the tokenizer itself, with SmolLM2's real tokenizer: after every id, the
//! stream's text is the full decode (cut at the first stop string), the
//! pieces it hands out add up to it, and stopping happens at the id where the
//! full decode first contains a stop string. The SmolLM2 tests need
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` (scripts/fetch-model.sh; the
//! README's test command fetches it) and are skipped, with a message, without
//! it; a synthetic SentencePiece tokenizer (byte fallback, a decoder that
//! strips the text's leading space) is built here.

#[path = "../../tessera-model/src/gguf/test_writer.rs"]
mod test_writer;

use std::path::PathBuf;
use tessera_engine::TextStream;
use tessera_model::gguf::GgufFile;
use tessera_model::Tokenizer;

fn smollm2_tokenizer() -> Option<Tokenizer> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!(
            "skipping: {} not found (run scripts/fetch-model.sh)",
            path.display()
        );
        return None;
    }
    let g = GgufFile::open(&path).expect("open SmolLM2 GGUF");
    Some(g.tokenizer().expect("tokenizer").expect("SmolLM2 has one"))
}

/// Texts whose tokens split UTF-8 characters, start with spaces, hold
/// special tokens (decoded to nothing) and repeat, long enough that the
/// window moves many times.
fn texts() -> Vec<String> {
    let mut long = String::new();
    for i in 0..40 {
        long.push_str(&format!(
            "Line {i}: naïve café — Ελληνικά 日本語 🦀👍🏽, don't stop; "
        ));
    }
    vec![
        "Hello, world! This is a test.".into(),
        "   leading spaces and trailing   ".into(),
        "I \u{2764}\u{fe0f} \u{1f980} and \u{1f44d}\u{1f3fd}".into(),
        "<|im_start|>user\nhi<|im_end|> after the special tokens".into(),
        "fn main() { println!(\"{}\", x[0] + 1); }\n\n\tindented".into(),
        long,
    ]
}

/// Feed `ids` one at a time; check every step against the full decode.
/// Returns the text handed out, whether a stop string ended it, and how many
/// ids the stream decoded in all.
///
/// The stream's text must equal the full decode (cut at the first stop
/// string) after every id where that decode does not end in U+FFFD (a
/// character still arriving). The pieces handed out so far must be a prefix of
/// the text the stream ends with: pieces are never taken back, even where a
/// full decode changes earlier text (a byte-fallback decoder turns a whole run
/// of byte tokens into U+FFFDs while the run ends inside a character, also
/// the characters before it that were complete).
fn check(tok: &Tokenizer, ids: &[u32], stop: &[&str]) -> (String, bool, u64) {
    let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
    let want_at = |n: usize| {
        let mut want = tok.decode(&ids[..n], true).unwrap();
        let cut = stop.iter().filter_map(|s| want.find(s.as_str())).min();
        if let Some(c) = cut {
            want.truncate(c);
        }
        (want, cut.is_some())
    };
    // Where the stream must end: the first id whose text holds a stop string, or the last.
    let last = (1..=ids.len()).find(|&n| want_at(n).1).unwrap_or(ids.len());
    let (end_text, end_stopped) = want_at(last);
    let mut stream = TextStream::new(stop.clone());
    let mut pieces = String::new();
    for n in 1..=last {
        let finished = n == ids.len();
        pieces.push_str(&stream.update(Some(tok), &ids[..n], finished).unwrap());
        let (want, stopped) = want_at(n);
        if !want.ends_with('\u{FFFD}') {
            assert_eq!(stream.text(), want, "text after {n} of {} ids", ids.len());
        }
        assert_eq!(stream.stopped(), stopped, "stopped after {n} ids");
        assert!(
            end_text.starts_with(&pieces),
            "pieces {pieces:?} after {n} ids are not a prefix of {end_text:?}"
        );
    }
    // Everything is out once it stops or finishes.
    assert!(stream.stopped() == end_stopped && (end_stopped || last == ids.len()));
    assert_eq!(pieces, end_text, "pieces at the end");
    (pieces, stream.stopped(), stream.ids_decoded())
}

#[test]
fn streamed_text_equals_the_full_decode_at_every_step() {
    let Some(tok) = smollm2_tokenizer() else {
        return;
    };
    for text in texts() {
        let ids = tok.encode(&text, false).unwrap();
        assert!(ids.len() > 3, "{text:?} encodes to {} ids", ids.len());
        let (out, stopped, decoded) = check(&tok, &ids, &[]);
        assert!(!stopped);
        assert_eq!(out, tok.decode(&ids, true).unwrap());
        // A few ids per update (a window and its first part), not all of
        // them: decoding every id each time would be ids^2 / 2 in all.
        let n = ids.len() as u64;
        assert!(
            decoded <= 8 * n,
            "{n} ids took {decoded} decoded ids; the window falls back to full decodes"
        );
    }
}

#[test]
fn streamed_text_equals_the_full_decode_with_a_sentencepiece_tokenizer() {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), test_writer::spm_tokenizer_gguf()).unwrap();
    let tok = GgufFile::open(f.path())
        .unwrap()
        .tokenizer()
        .unwrap()
        .expect("the file has a tokenizer");
    // Leading spaces (stripped by the decoder at the start of a text, so at
    // the start of every window too), characters outside the vocabulary
    // (byte-fallback tokens, several per character), special tokens.
    let text = "hello world  the weather h\u{e9}llo \u{65e5}\u{672c} hi<|eot|>there <tool>x a\nb trailing ";
    for text in [text.to_string(), format!(" leading{}", text.repeat(4))] {
        let ids = tok.encode(&text, true).unwrap();
        assert!(ids.len() > 20);
        let (out, stopped, decoded) = check(&tok, &ids, &[]);
        assert!(!stopped);
        assert_eq!(out, tok.decode(&ids, true).unwrap());
        let n = ids.len() as u64;
        assert!(decoded <= 8 * n, "{n} ids took {decoded} decoded ids");
        let (out, stopped, _) = check(&tok, &ids, &["\u{672c} hi"]);
        assert!(stopped);
        assert!(out.ends_with("\u{65e5}"), "{out:?}");
    }
}

#[test]
fn stop_strings_cut_where_the_full_decode_first_contains_them() {
    let Some(tok) = smollm2_tokenizer() else {
        return;
    };
    let text = texts().pop().unwrap();
    let ids = tok.encode(&text, false).unwrap();
    // A stop string inside one token, one spanning tokens, one with
    // multi-byte characters, and one that never occurs.
    for (stop, at) in [
        ("Line 3", "Line 3"),
        ("café — Ελλ", "café — Ελλ"),
        ("🦀👍", "🦀👍"),
        ("Line 17: na", "Line 17: na"),
    ] {
        let (out, stopped, _) = check(&tok, &ids, &[stop, "never appears"]);
        assert!(stopped, "{stop:?} should stop the stream");
        assert_eq!(out, text[..text.find(at).unwrap()], "cut for {stop:?}");
    }
    let (out, stopped, _) = check(&tok, &ids, &["never appears"]);
    assert!(!stopped);
    assert_eq!(out, text);
}

/// Streaming a long generation: microseconds per token of `TextStream`
/// beside decoding all ids at every token (what it did before), in the same
/// run: `cargo test --release -p tessera-engine --test text_stream -- --ignored --nocapture`
/// (docs/benchmarks.md).
#[test]
#[ignore]
fn bench_text_stream_against_full_decodes() {
    let Some(tok) = smollm2_tokenizer() else {
        return;
    };
    let text = texts().pop().unwrap().repeat(3);
    let ids = tok.encode(&text, false).unwrap();
    for len in [256usize, 1024, ids.len()] {
        let ids = &ids[..len];
        let t = std::time::Instant::now();
        let mut stream = TextStream::new(vec!["<|im_end|>".into()]);
        for n in 1..=len {
            stream.update(Some(&tok), &ids[..n], n == len).unwrap();
        }
        let windowed = t.elapsed().as_secs_f64() * 1e6 / len as f64;
        let t = std::time::Instant::now();
        let mut chars = 0;
        for n in 1..=len {
            chars += tok.decode(&ids[..n], true).unwrap().len();
        }
        let full = t.elapsed().as_secs_f64() * 1e6 / len as f64;
        assert!(chars > 0);
        println!(
            "BENCH text_stream {len} tokens: {windowed:.1} us per token, full decodes {full:.1} us ({:.1}x)",
            full / windowed
        );
    }
}
