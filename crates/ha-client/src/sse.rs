//! Server-sent events from a response body: the subset ha-node sends
//! (`event:` and `data:` lines, `:` comments for keep-alive, an empty line
//! ending each event), with `\n` or `\r\n` line ends and events split
//! anywhere across chunks.
//!
//! Hand-written because it is this small; a general SSE client crate would
//! bring reconnection logic the watch must not have (a watch resumes from
//! its own revision, on any member).

use std::pin::Pin;

use futures::{Stream, StreamExt};

/// One event: its name (`message` when none was given) and its data
/// lines joined with `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) name: String,
    pub(crate) data: String,
}

/// Reads events off a byte stream.
pub(crate) struct SseReader {
    body: Pin<Box<dyn Stream<Item = Result<Vec<u8>, ()>> + Send>>,
    buf: Vec<u8>,
}

/// Events larger than this end the stream (a member never sends one:
/// a watch response is bounded by the KV's request size).
const MAX_EVENT: usize = 64 << 20;

impl SseReader {
    pub(crate) fn new(body: impl Stream<Item = Result<Vec<u8>, ()>> + Send + 'static) -> Self {
        SseReader {
            body: Box::pin(body),
            buf: Vec::new(),
        }
    }

    /// The next event; `None` when the body ended, failed, or broke the
    /// format (the caller treats all three as a lost connection).
    pub(crate) async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.take_event() {
                return Some(event);
            }
            if self.buf.len() > MAX_EVENT {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// A complete event from the buffer, if there is one; comment-only
    /// blocks are skipped.
    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = blank_line(&self.buf)?;
            let block: Vec<u8> = self.buf.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&block[..end.0]);
            let mut name = None;
            let mut data: Option<String> = None;
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => name = Some(value.to_string()),
                    "data" => match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(value);
                        }
                        None => data = Some(value.to_string()),
                    },
                    _ => {}
                }
            }
            if name.is_some() || data.is_some() {
                return Some(SseEvent {
                    name: name.unwrap_or_else(|| "message".into()),
                    data: data.unwrap_or_default(),
                });
            }
        }
    }
}

/// Where the first blank line is: (end of the block's text, end of the
/// blank line).
fn blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            let rest = &buf[i + 1..];
            if rest.first() == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if rest.starts_with(b"\r\n") {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let chunks: Vec<Result<Vec<u8>, ()>> = chunks.iter().map(|c| Ok(c.to_vec())).collect();
        let mut r = SseReader::new(futures::stream::iter(chunks));
        let mut out = Vec::new();
        while let Some(e) = r.next().await {
            out.push(e);
        }
        out
    }

    fn ev(name: &str, data: &str) -> SseEvent {
        SseEvent {
            name: name.into(),
            data: data.into(),
        }
    }

    #[tokio::test]
    async fn events_split_anywhere_comments_skipped_crlf_accepted() {
        let text = b"event: created\ndata: {\"a\":1}\n\n:\n\nevent: watch\r\ndata: x\r\ndata: y\r\n\r\ndata:z\n\n";
        let whole = events(&[text]).await;
        assert_eq!(
            whole,
            vec![
                ev("created", "{\"a\":1}"),
                ev("watch", "x\ny"),
                ev("message", "z")
            ]
        );
        // Every split point gives the same events.
        for cut in 0..text.len() {
            assert_eq!(
                events(&[&text[..cut], &text[cut..]]).await,
                whole,
                "cut at {cut}"
            );
        }
        // An unfinished event at the end is not an event.
        assert_eq!(events(&[b"event: watch\ndata: 1\n"]).await, vec![]);
    }
}
