//! The JSON Lines request layer of `tessera-hsm batch`.
//!
//! A request is `{"op": NAME, "input": {...}}` where NAME and the input
//! field names are those of the vector files (`tests/vectors/NAME.jsonl`).
//! The answer is `{"output": {...}}` or `{"error": "..."}`. One line in, one
//! line out, in order; a bad line is answered with an error and the batch
//! goes on.

mod error;
pub mod input;
mod ops;

use std::io::{BufRead, Write};

use serde_json::{json, Value};

pub use error::{BatchError, InField};
pub use input::Input;
pub use ops::OP_NAMES;

use crate::keyfile::KeyStore;

/// Answer one parsed request: the `output` object or an error.
pub fn run_request(request: &Value, keys: Option<&KeyStore>) -> Result<Value, BatchError> {
    run_request_with_default(request, keys, None)
}

/// [`run_request`], where a request without `op` uses `default_op` (so a
/// vector file, whose lines carry only `input`, can be fed as it is).
pub fn run_request_with_default(
    request: &Value,
    keys: Option<&KeyStore>,
    default_op: Option<&str>,
) -> Result<Value, BatchError> {
    let obj = request.as_object().ok_or(BatchError::Shape)?;
    let op = match obj.get("op") {
        Some(v) => v.as_str().ok_or(BatchError::Shape)?,
        None => default_op.ok_or(BatchError::Shape)?,
    };
    let input = obj
        .get("input")
        .and_then(Value::as_object)
        .ok_or(BatchError::Shape)?;
    ops::run(op, Input::new(input, keys))
}

/// Answer one request line with one answer line (without the newline).
pub fn answer_line(line: &str, keys: Option<&KeyStore>, default_op: Option<&str>) -> String {
    let answer = serde_json::from_str::<Value>(line)
        .map_err(|e| BatchError::Json(e.to_string()))
        .and_then(|req| run_request_with_default(&req, keys, default_op));
    match answer {
        Ok(output) => json!({ "output": output }).to_string(),
        Err(e) => json!({ "error": e.to_string() }).to_string(),
    }
}

/// Longest request line accepted. A longer line is answered with an error
/// (and skipped) instead of being buffered without bound.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Stream requests from `reader` to answers on `writer`, one line each, in
/// order, in constant memory. Blank lines are skipped. Returns how many
/// requests were answered and how many of them were errors.
pub fn run_stream(
    reader: impl BufRead,
    mut writer: impl Write,
    keys: Option<&KeyStore>,
    default_op: Option<&str>,
) -> std::io::Result<(u64, u64)> {
    let mut lines = BoundedLines::new(reader, MAX_LINE_BYTES);
    let (mut answered, mut errors) = (0u64, 0u64);
    while let Some(line) = lines.next_line()? {
        let answer = match line {
            Line::Text(text) if text.trim().is_empty() => continue,
            Line::Text(text) => answer_line(text, keys, default_op),
            Line::TooLong => {
                json!({ "error": format!("request line longer than {MAX_LINE_BYTES} bytes") })
                    .to_string()
            }
            Line::NotUtf8 => json!({ "error": "request line is not valid UTF-8" }).to_string(),
        };
        if answer.starts_with("{\"error\"") {
            errors += 1;
        }
        answered += 1;
        writer.write_all(answer.as_bytes())?;
        writer.write_all(b"\n")?;
    }
    writer.flush()?;
    Ok((answered, errors))
}

/// One input line as [`BoundedLines`] yields it.
enum Line<'a> {
    Text(&'a str),
    TooLong,
    NotUtf8,
}

/// A line reader that never holds more than `max` bytes of one line.
struct BoundedLines<R> {
    reader: R,
    buf: Vec<u8>,
    max: usize,
}

impl<R: BufRead> BoundedLines<R> {
    fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            buf: Vec::new(),
            max,
        }
    }

    fn next_line(&mut self) -> std::io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let mut too_long = false;
        let mut saw_any = false;
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            saw_any = true;
            let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            if !too_long && self.buf.len() + part.len() <= self.max {
                self.buf.extend_from_slice(part);
            } else {
                too_long = true;
                self.buf.clear();
            }
            let consumed = done.unwrap_or(chunk.len());
            self.reader.consume(consumed);
            if done.is_some() {
                break;
            }
        }
        if !saw_any {
            return Ok(None);
        }
        if too_long {
            return Ok(Some(Line::TooLong));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some(match std::str::from_utf8(&self.buf) {
            Ok(s) => Line::Text(s),
            Err(_) => Line::NotUtf8,
        }))
    }
}

/// Fuzzing entry point: any bytes as one request line. The answer must be
/// one line of JSON with either `output` or `error`.
pub fn fuzz_request_line(data: &[u8]) {
    let mut out = Vec::new();
    let (answered, _) =
        run_stream(data, &mut out, None, None).expect("writing to a Vec cannot fail");
    let text = std::str::from_utf8(&out).expect("answers are UTF-8");
    assert_eq!(text.lines().count() as u64, answered);
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("every answer is JSON");
        assert!(v.get("output").is_some() || v.get("error").is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_do_not_stop_the_stream() {
        let input = b"not json\n{\"op\":\"nope\",\"input\":{}}\n\n{\"op\":\"aes_cmac\",\"input\":{\"key\":\"2B7E151628AED2A6ABF7158809CF4F3C\",\"data\":\"\"}}\n";
        let mut out = Vec::new();
        let (n, errors) = run_stream(&input[..], &mut out, None, None).unwrap();
        assert_eq!((n, errors), (3, 2));
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("not valid JSON"));
        assert!(lines[1].contains("unknown op"));
        assert!(lines[2].contains("BB1D6929E95937287FA37D129B756746"));
    }

    #[test]
    fn overlong_line_is_an_error_not_a_buffer() {
        let mut input = vec![b'x'; 100];
        input.push(b'\n');
        input.extend_from_slice(b"{}\n");
        let mut lines = BoundedLines::new(&input[..], 10);
        assert!(matches!(lines.next_line().unwrap(), Some(Line::TooLong)));
        assert!(matches!(lines.next_line().unwrap(), Some(Line::Text("{}"))));
        assert!(lines.next_line().unwrap().is_none());
    }
}
