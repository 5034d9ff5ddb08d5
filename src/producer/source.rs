//! Where messages come from: synthetic `Message: N` at a rate (the original program's behaviour),
//! lines of any async reader (stdin), or a file followed like `tail -F`. A source stops at
//! `--count`, at end of input, or when shutdown is requested, and never counts a message as sent
//! before the batcher's channel has taken it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncSeekExt, BufReader},
    sync::mpsc,
    time::Instant,
};

use super::summary::Stats;
use crate::shutdown::CancellationToken;

/// A source of messages.
pub enum Source {
    /// `Message: 0`, `Message: 1`, ... at `rate` per second (`0` or less: as fast as accepted).
    Synthetic {
        /// Messages per second.
        rate: f64,
    },
    /// One message per line of the reader (stdin, or anything a test or the demo builds).
    Lines(Box<dyn AsyncBufRead + Send + Unpin>),
    /// A file followed like `tail -F`: polled for new lines, reopened when rotated, reread from
    /// the start when truncated.
    File {
        /// The path to follow (it may not exist yet).
        path: PathBuf,
        /// Start at the current end of the file instead of its beginning.
        from_end: bool,
        /// How often to look for new data, rotation and truncation at end of file.
        poll: Duration,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Synthetic { rate } => f.debug_struct("Synthetic").field("rate", rate).finish(),
            Self::Lines(_) => f.write_str("Lines(..)"),
            Self::File { path, from_end, poll } => f
                .debug_struct("File")
                .field("path", path)
                .field("from_end", from_end)
                .field("poll", poll)
                .finish(),
        }
    }
}

/// Hands messages to the batcher, enforcing `--count` and counting what was sent.
pub(crate) struct Emitter {
    /// The batcher's channel.
    tx: mpsc::Sender<String>,
    /// Messages still allowed by `--count` (`None`: unlimited).
    remaining: Option<u64>,
    /// Where `sent` and `skipped` are counted.
    stats: Arc<Stats>,
    /// Stops the source.
    shutdown: CancellationToken,
}

impl Emitter {
    pub(crate) fn new(
        tx: mpsc::Sender<String>,
        count: Option<u64>,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            tx,
            remaining: count,
            stats,
            shutdown,
        }
    }

    /// Whether the source must stop (count reached or shutdown requested).
    fn done(&self) -> bool {
        self.remaining == Some(0) || self.shutdown.is_cancelled()
    }

    /// Sends one message (waiting while the batcher's queue is full); `false` means stop.
    async fn emit(&mut self, message: String) -> bool {
        if self.done() {
            return false;
        }
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return false,
            sent = self.tx.send(message) => if sent.is_err() { return false },
        }
        self.stats.add_sent(1);
        if let Some(remaining) = &mut self.remaining {
            *remaining -= 1;
        }
        !self.done()
    }

    /// Sends one input line (without its line ending); empty lines are skipped and counted.
    async fn emit_line(&mut self, line: &[u8]) -> bool {
        let line = trim_line_end(line);
        if line.is_empty() {
            self.stats.add_skipped(1);
            return !self.done();
        }
        self.emit(String::from_utf8_lossy(line).into_owned()).await
    }
}

/// Strips one trailing `\n` and then one `\r`.
fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Runs `source` until it ends, `--count` is reached or shutdown is requested.
pub(crate) async fn run(source: Source, mut emitter: Emitter) {
    match source {
        Source::Synthetic { rate } => synthetic(rate, &mut emitter).await,
        Source::Lines(reader) => lines(reader, &mut emitter).await,
        Source::File { path, from_end, poll } => follow(&path, from_end, poll, &mut emitter).await,
    }
}

/// `Message: N` from 0, paced so that message `n` is due at `n / rate` seconds (a source held
/// back by a full queue catches up in a burst, so the average rate holds).
async fn synthetic(rate: f64, emitter: &mut Emitter) {
    let started = Instant::now();
    let mut n: u64 = 0;
    loop {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            // Only wait when ahead of schedule: no timer per message at high rates.
            if due > Instant::now() {
                tokio::select! {
                    biased;
                    _ = emitter.shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(due) => {}
                }
            }
        }
        if !emitter.emit(format!("Message: {n}")).await {
            return;
        }
        n += 1;
    }
}

/// One message per line until end of input.
async fn lines(mut reader: Box<dyn AsyncBufRead + Send + Unpin>, emitter: &mut Emitter) {
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::select! {
            biased;
            _ = emitter.shutdown.cancelled() => return,
            read = reader.read_until(b'\n', &mut line) => read,
        };
        match read {
            Ok(0) => return,
            Ok(_) => {
                if !emitter.emit_line(&line).await {
                    return;
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot read the input; stopping the source");
                return;
            }
        }
    }
}

/// Identifies a file across renames: device and inode on Unix.
#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

/// Without inodes rotation is only noticed as truncation.
#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// The file being followed.
struct Followed {
    reader: BufReader<tokio::fs::File>,
    id: Option<(u64, u64)>,
    /// Bytes consumed so far (to notice truncation).
    pos: u64,
}

/// Opens `path`, at its end when `at_end`.
async fn open(path: &Path, at_end: bool) -> std::io::Result<Followed> {
    let mut file = tokio::fs::File::open(path).await?;
    let meta = file.metadata().await?;
    let pos = if at_end {
        file.seek(std::io::SeekFrom::End(0)).await?
    } else {
        0
    };
    Ok(Followed {
        reader: BufReader::new(file),
        id: file_id(&meta),
        pos,
    })
}

/// What the end of the followed file means.
enum AtEof {
    /// Nothing new: wait a poll interval.
    Wait,
    /// The path now names another file: finish the old one, then open the new one.
    Rotated,
    /// The file shrank below what was read: start again from its beginning.
    Truncated,
}

/// Compares the open file with what the path names now.
async fn check_eof(path: &Path, followed: &Followed) -> AtEof {
    match tokio::fs::metadata(path).await {
        Ok(meta) => {
            let id = file_id(&meta);
            if id.is_some() && id != followed.id {
                AtEof::Rotated
            } else if meta.len() < followed.pos {
                AtEof::Truncated
            } else {
                AtEof::Wait
            }
        }
        // Moved away and not yet recreated: keep the old file until a new one appears.
        Err(_) => AtEof::Wait,
    }
}

/// Follows `path` like `tail -F`: complete lines are sent; a partial last line waits for its
/// newline (and is sent as it is when the file is rotated or truncated).
async fn follow(path: &Path, from_end: bool, poll: Duration, emitter: &mut Emitter) {
    let mut first_open = true;
    let mut current: Option<Followed> = None;
    let mut partial: Vec<u8> = Vec::new();
    loop {
        if emitter.done() {
            return;
        }
        let Some(followed) = current.as_mut() else {
            match open(path, from_end && first_open).await {
                Ok(followed) => {
                    tracing::debug!(path = %path.display(), "following file");
                    current = Some(followed);
                }
                Err(err) => {
                    if first_open {
                        tracing::info!(path = %path.display(), %err, "waiting for the file to appear");
                    }
                    if !pause(poll, emitter).await {
                        return;
                    }
                }
            }
            first_open = false;
            continue;
        };
        let read = tokio::select! {
            biased;
            _ = emitter.shutdown.cancelled() => return,
            read = followed.reader.read_until(b'\n', &mut partial) => read,
        };
        match read {
            Ok(0) => match check_eof(path, followed).await {
                AtEof::Wait => {
                    if !pause(poll, emitter).await {
                        return;
                    }
                }
                AtEof::Rotated => {
                    // Lines written to the old file after our last read are still ours.
                    if !drain_to_eof(followed, &mut partial, emitter).await {
                        return;
                    }
                    if !flush_partial(&mut partial, emitter).await {
                        return;
                    }
                    tracing::info!(path = %path.display(), "file rotated; reopening");
                    current = None;
                }
                AtEof::Truncated => {
                    if !flush_partial(&mut partial, emitter).await {
                        return;
                    }
                    tracing::info!(path = %path.display(), "file truncated; reading from its start");
                    match followed.reader.seek(std::io::SeekFrom::Start(0)).await {
                        Ok(_) => followed.pos = 0,
                        Err(err) => {
                            tracing::warn!(%err, "cannot rewind the truncated file; reopening");
                            current = None;
                        }
                    }
                }
            },
            Ok(n) => {
                followed.pos += n as u64;
                if partial.ends_with(b"\n") {
                    let sent = emitter.emit_line(&partial).await;
                    partial.clear();
                    if !sent {
                        return;
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%err, path = %path.display(), "cannot read the file; reopening");
                current = None;
                if !pause(poll, emitter).await {
                    return;
                }
            }
        }
    }
}

/// Reads and sends the rest of a rotated file's complete lines; `false` means stop.
async fn drain_to_eof(followed: &mut Followed, partial: &mut Vec<u8>, emitter: &mut Emitter) -> bool {
    loop {
        match followed.reader.read_until(b'\n', partial).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                followed.pos += n as u64;
                if partial.ends_with(b"\n") {
                    let sent = emitter.emit_line(partial).await;
                    partial.clear();
                    if !sent {
                        return false;
                    }
                }
            }
        }
    }
}

/// Sends a line that never got its newline (its file was rotated or truncated).
async fn flush_partial(partial: &mut Vec<u8>, emitter: &mut Emitter) -> bool {
    if partial.is_empty() {
        return true;
    }
    let sent = emitter.emit_line(partial).await;
    partial.clear();
    sent
}

/// Waits one poll interval; `false` when shutdown came first.
async fn pause(poll: Duration, emitter: &Emitter) -> bool {
    tokio::select! {
        biased;
        _ = emitter.shutdown.cancelled() => false,
        _ = tokio::time::sleep(poll) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(source: Source, count: Option<u64>) -> (Vec<String>, Arc<Stats>) {
        let (tx, mut rx) = mpsc::channel(1000);
        let stats = Arc::new(Stats::new("p".into(), None));
        let emitter = Emitter::new(tx, count, stats.clone(), CancellationToken::new());
        run(source, emitter).await;
        let mut got = Vec::new();
        while let Some(m) = rx.recv().await {
            got.push(m);
        }
        (got, stats)
    }

    /// Line endings (`\n`, `\r\n`, none at end of input) are stripped, blank lines skipped and
    /// counted, invalid UTF-8 replaced rather than dropped.
    #[tokio::test]
    async fn lines_are_trimmed_and_blank_lines_skipped() {
        let input: &[u8] = b"one\r\ntwo\n\nbad \xff byte\nlast";
        let (got, stats) = collect(Source::Lines(Box::new(input)), None).await;
        assert_eq!(got, ["one", "two", "bad \u{fffd} byte", "last"]);
        let s = stats.snapshot();
        assert_eq!((s.sent, s.skipped), (4, 1));
    }

    /// `--count` stops the source after exactly N messages.
    #[tokio::test(start_paused = true)]
    async fn synthetic_stops_at_count() {
        let (got, stats) = collect(Source::Synthetic { rate: 1000.0 }, Some(3)).await;
        assert_eq!(got, ["Message: 0", "Message: 1", "Message: 2"]);
        assert_eq!(stats.snapshot().sent, 3);
    }

    /// The synthetic source is paced: message n is not emitted before n / rate seconds.
    #[tokio::test(start_paused = true)]
    async fn synthetic_is_paced() {
        let started = Instant::now();
        let (got, _) = collect(Source::Synthetic { rate: 10.0 }, Some(5)).await;
        assert_eq!(got.len(), 5);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(400),
            "paused clock: 4 intervals"
        );
    }
}
