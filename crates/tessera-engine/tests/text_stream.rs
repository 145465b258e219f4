//! `TextStream` (incremental detokenization) against a decode of all ids by
//! the tokenizer itself, with SmolLM2's real tokenizer: after every id, the
//! stream's text is the full decode (cut at the first stop string), the
//! pieces it hands out add up to it, and stopping happens at the id where the
//! full decode first contains a stop string. Needs
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` (scripts/fetch-model.sh; the
//! README's test command fetches it) and is skipped, with a message, without it.

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
fn check(tok: &Tokenizer, ids: &[u32], stop: &[&str]) -> (String, bool, u64) {
    let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
    let mut stream = TextStream::new(stop.clone());
    let mut pieces = String::new();
    for n in 1..=ids.len() {
        let finished = n == ids.len();
        pieces.push_str(&stream.update(Some(tok), &ids[..n], finished).unwrap());
        let mut want = tok.decode(&ids[..n], true).unwrap();
        let cut = stop.iter().filter_map(|s| want.find(s.as_str())).min();
        if let Some(c) = cut {
            want.truncate(c);
        }
        assert_eq!(stream.text(), want, "text after {n} of {} ids", ids.len());
        assert_eq!(stream.stopped(), cut.is_some(), "stopped after {n} ids");
        assert!(
            want.starts_with(&pieces),
            "pieces {pieces:?} are not a prefix of {want:?}"
        );
        if stream.stopped() || finished {
            // Everything is out once it stops or finishes.
            assert_eq!(pieces, want, "pieces after {n} ids");
            return (pieces, stream.stopped(), stream.ids_decoded());
        }
    }
    unreachable!("the last id finishes the stream")
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
