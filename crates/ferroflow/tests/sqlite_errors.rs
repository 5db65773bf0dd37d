//! Paths the SQLite store cannot use give `Error::Store` naming the path, never a panic.
//! (Read-only files and full disks need privileges or limits set per process: the pytest
//! suite covers them, in child processes, in tests/test_store_errors.py.)
#![cfg(feature = "sqlite")]

use std::path::Path;

use ferroflow::{Error, SqliteStore};

/// The store error opening `path` gives, in full (`Display` of the error).
fn open_error(path: &Path) -> String {
    match SqliteStore::open(path) {
        Ok(_) => panic!("{} opened as a store", path.display()),
        Err(error @ Error::Store(_)) => error.to_string(),
        Err(other) => panic!("expected Error::Store, got {other:?}"),
    }
}

#[test]
fn a_directory_is_refused_with_a_store_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    std::fs::create_dir(&path).unwrap();
    let message = open_error(&path);
    assert!(message.starts_with("store: "), "{message}");
    assert!(message.contains(&path.display().to_string()), "the error names the path: {message}");
    assert!(message.contains("cannot"), "{message}");
    assert!(std::fs::read_dir(&path).unwrap().next().is_none(), "nothing was created inside the directory");
}

#[test]
fn a_path_below_a_regular_file_is_refused_with_a_store_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"just a file").unwrap();
    let path = file.join("runs.db");
    let message = open_error(&path);
    assert!(message.starts_with("store: "), "{message}");
    assert!(message.contains(&path.display().to_string()), "the error names the path: {message}");
    assert_eq!(std::fs::read(&file).unwrap(), b"just a file", "the file in the way is untouched");
}
