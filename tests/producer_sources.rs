//! The producer's line sources end to end: any `AsyncBufRead` (how `--stdin` works) and a file
//! followed like `tail -F` through appends, truncation and rotation.

mod producer_support;

use std::{io::Write, time::Duration};

use producer_support::{wait_until, within, FakeNode};
use simpleloggers::{
    producer::{self, Config, Hooks},
    shutdown::CancellationToken,
};

const LIMIT: Duration = Duration::from_secs(30);

fn append(path: &std::path::Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    file.write_all(text.as_bytes()).expect("append");
}

/// Lines of a reader (here an in-memory duplex pipe, as stdin would be) are sent in order, one
/// message per line; end of input ends the run with everything acknowledged.
#[tokio::test]
async fn reader_lines_until_end_of_input() {
    let node = FakeNode::start().await;
    let (mut writer, reader) = tokio::io::duplex(64);
    let hooks = Hooks {
        reader: Some(Box::new(tokio::io::BufReader::new(reader))),
        ..Hooks::default()
    };
    let run = tokio::spawn(producer::run_with(
        Config::for_target(node.url()),
        CancellationToken::new(),
        hooks,
    ));
    use tokio::io::AsyncWriteExt;
    writer
        .write_all(b"first line\nsecond \"quoted\" line\n")
        .await
        .expect("write");
    wait_until(LIMIT, "the first lines are stored", || node.stored() == 2).await;
    writer
        .write_all(b"third\r\n\nlast without newline")
        .await
        .expect("write");
    drop(writer);
    let summary = within(LIMIT, "producer run", run)
        .await
        .expect("joins")
        .expect("runs");
    assert_eq!(
        node.messages(),
        [
            "first line",
            "second \"quoted\" line",
            "third",
            "last without newline"
        ]
    );
    assert_eq!((summary.sent, summary.acknowledged, summary.skipped), (4, 4, 1));
    assert!(summary.all_acknowledged());
}

/// `--file` follows appends, notices truncation (rereads from the start) and rotation (finishes
/// the old file, including lines written to it after the rename, then reads the new one), and
/// `--count` ends it.
#[tokio::test]
async fn file_is_followed_through_truncation_and_rotation() {
    let node = FakeNode::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.log");
    append(&path, "a\nb\n");
    let config = Config {
        file: Some(path.clone()),
        file_poll: Duration::from_millis(20),
        count: Some(7),
        ..Config::for_target(node.url())
    };
    let run = tokio::spawn(producer::run(config, CancellationToken::new()));

    wait_until(LIMIT, "the existing lines", || node.stored() == 2).await;
    append(&path, "c\n");
    wait_until(LIMIT, "an appended line", || node.stored() == 3).await;

    // Truncation: the file shrinks below what was read, then gets new content.
    std::fs::write(&path, "d\n").expect("truncate and write");
    wait_until(LIMIT, "the line after truncation", || node.stored() == 4).await;

    // Rotation: rename, a late write to the old file, then a new file at the path.
    let rotated = dir.path().join("app.log.1");
    std::fs::rename(&path, &rotated).expect("rotate");
    append(&rotated, "e\n");
    append(&path, "f\ng\nh-not-sent\n");

    let summary = within(LIMIT, "producer run", run)
        .await
        .expect("joins")
        .expect("runs");
    assert_eq!(node.messages(), ["a", "b", "c", "d", "e", "f", "g"]);
    assert_eq!((summary.sent, summary.acknowledged), (7, 7));
}

/// A file that does not exist yet is waited for, then read from its beginning.
#[tokio::test]
async fn file_that_appears_later() {
    let node = FakeNode::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("late.log");
    let config = Config {
        file: Some(path.clone()),
        file_poll: Duration::from_millis(20),
        count: Some(2),
        ..Config::for_target(node.url())
    };
    let run = tokio::spawn(producer::run(config, CancellationToken::new()));
    append(&path, "x\ny\n");
    let summary = within(LIMIT, "producer run", run)
        .await
        .expect("joins")
        .expect("runs");
    assert_eq!(node.messages(), ["x", "y"]);
    assert!(summary.all_acknowledged());
}
