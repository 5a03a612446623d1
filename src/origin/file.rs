//! A local directory as an origin (`file://dir`): the demo vhost's storage, and a way to put
//! Strata in front of a mounted volume. Request paths are mapped inside the directory and can
//! never escape it (no `..`, no absolute paths, symlinks resolved and checked).

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use crate::body::{self, Body, BoxError};

/// Serves `GET`/`HEAD` of `path_and_query` from `root` (single byte ranges honoured).
pub async fn serve(
    root: &Path,
    method: &Method,
    path_and_query: &str,
    range: Option<&str>,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return simple(
            StatusCode::METHOD_NOT_ALLOWED,
            "file origin serves GET and HEAD only\n",
        );
    }
    let Some(path) = map_path(root, path_and_query).await else {
        return simple(StatusCode::NOT_FOUND, "not found\n");
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return simple(StatusCode::NOT_FOUND, "not found\n");
    };
    let Ok(md) = file.metadata().await else {
        return simple(StatusCode::NOT_FOUND, "not found\n");
    };
    if !md.is_file() {
        return simple(StatusCode::NOT_FOUND, "not found\n");
    }
    let len = md.len();
    let mtime = md.modified().unwrap_or(UNIX_EPOCH);
    let secs = mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let etag = format!("\"{:x}-{:x}\"", secs, len);

    let (status, start, end) = match range.and_then(|r| single_range(r, len)) {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
    };
    let body_len = if len == 0 { 0 } else { end - start + 1 };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, body_len)
        .header(header::CONTENT_TYPE, content_type(&path))
        .header(header::LAST_MODIFIED, httpdate::fmt_http_date(mtime))
        .header(header::ETAG, etag)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    let body = if method == Method::HEAD || body_len == 0 {
        body::empty()
    } else {
        if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return simple(StatusCode::INTERNAL_SERVER_ERROR, "seek failed\n");
        }
        stream_file(file, body_len)
    };
    resp.body(body)
        .unwrap_or_else(|_| simple(StatusCode::INTERNAL_SERVER_ERROR, "bad response\n"))
}

/// Streams `len` bytes of `file` in 64 KiB reads; a short file is an error, not a clean end.
fn stream_file(mut file: tokio::fs::File, len: u64) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(4);
    tokio::spawn(async move {
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; left.min(64 * 1024) as usize];
            match file.read(&mut buf).await {
                Ok(0) => {
                    let _ = tx.send(Err("file shrank while being read".into())).await;
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(Box::new(e))).await;
                    return;
                }
            }
        }
    });
    body::from_channel(rx)
}

/// Maps a request path inside `root`, or None when it would leave it.
async fn map_path(root: &Path, path_and_query: &str) -> Option<PathBuf> {
    let path = path_and_query.split(['?', '#']).next().unwrap_or("/");
    let mut rel = PathBuf::new();
    for seg in path.split('/') {
        let seg = percent_decode(seg)?;
        match seg.as_str() {
            "" | "." => {}
            ".." => return None,
            s if s.contains(['/', '\\', '\0']) => return None,
            s => rel.push(s),
        }
    }
    let mut full = root.join(&rel);
    if tokio::fs::metadata(&full).await.ok()?.is_dir() {
        full.push("index.html");
    }
    // Symlinks could point outside: compare canonical forms.
    let canon_root = tokio::fs::canonicalize(root).await.ok()?;
    let canon = tokio::fs::canonicalize(&full).await.ok()?;
    canon.starts_with(&canon_root).then_some(canon)
}

/// Decodes `%XX` escapes; None on a malformed escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses one `bytes=a-b` / `a-` / `-n` range against `len`; anything else is None (full body).
fn single_range(v: &str, len: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (n > 0).then(|| (len.saturating_sub(n), len - 1))
    } else {
        let s: u64 = a.parse().ok()?;
        let e = if b.is_empty() {
            len - 1
        } else {
            b.parse::<u64>().ok()?.min(len - 1)
        };
        (s <= e).then_some((s, e))
    }
}

fn content_type(path: &Path) -> HeaderValue {
    let t = match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css",
        "js" => "application/javascript",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    };
    HeaderValue::from_static(t)
}

fn simple(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(msg));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paths_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        assert!(map_path(&root, "/a.txt").await.is_some());
        assert!(map_path(&root, "/../secret").await.is_none());
        assert!(map_path(&root, "/%2e%2e/secret").await.is_none());
        assert!(map_path(&root, "/x/../../secret").await.is_none());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
            assert!(map_path(&root, "/link").await.is_none());
        }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(single_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(single_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(single_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(single_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(single_range("bytes=0-1,5-6", 100), None);
        assert_eq!(single_range("bytes=9-1", 100), None);
    }
}
