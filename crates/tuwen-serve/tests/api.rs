//! The JSON API over HTTP on loopback: health, text / image / "more like this" search with the
//! same ranking as the library, filters, pictures and cached thumbnails, and the refusals:
//! path traversal, symbolic-link escape, files not indexed, oversized and broken uploads, bad
//! parameters, each with its status and a one-line JSON error.

mod common;

use std::io::Read;
use std::path::Path;

use common::*;
use serde_json::Value;

struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self, status: u16, needle: &str) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let msg = self.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }
}

fn reply(r: Result<ureq::Response, ureq::Error>) -> Reply {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = r.status();
    let content_type = r.header("content-type").unwrap_or_default().to_string();
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).unwrap();
    Reply {
        status,
        content_type,
        body,
    }
}

fn get(base: &str, path: &str, query: &[(&str, &str)]) -> Reply {
    let mut req = ureq::get(&format!("{base}{path}"));
    for (k, v) in query {
        req = req.query(k, v);
    }
    reply(req.call())
}

fn post(base: &str, query: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = ureq::post(&format!("{base}/api/search"));
    for (k, v) in query {
        req = req.query(k, v);
    }
    reply(req.send_bytes(body))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn hits(r: &Reply) -> Vec<(String, f32)> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["path"].as_str().unwrap().to_string(),
                h["score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

#[test]
fn the_api_searches_serves_and_refuses() {
    let f = indexed("api", 12);
    let base = start(&f.db, 64 << 10);
    let n = f.files.len();

    let h = get(&base, "/api/health", &[]);
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["images"].as_u64(), Some(n as u64));
    assert_eq!(h["folders"][0].as_str(), Some(s(&f.images)));

    // Text: the library's exact ranking, best first, k of them.
    let got = hits(&get(
        &base,
        "/api/search",
        &[("q", "a red circle"), ("k", "5")],
    ));
    let want = expected_for_text(&f.db, "a red circle", 5);
    assert_eq!(got.len(), 5);
    for ((gp, gs), (wp, ws)) in got.iter().zip(&want) {
        assert_eq!(gp, wp);
        assert!((gs - ws).abs() < 1e-6, "{gs} vs {ws}");
    }
    assert!(got.windows(2).all(|w| w[0].1 >= w[1].1));

    // An uploaded picture finds itself first (cosine 1), and so does "more like this".
    let target = &f.files[3];
    let got = hits(&post(&base, &[("k", "3")], &std::fs::read(target).unwrap()));
    assert_eq!(got[0].0, s(target));
    assert!((got[0].1 - 1.0).abs() < 1e-4, "{}", got[0].1);
    let got = hits(&get(
        &base,
        "/api/search",
        &[("like", s(target)), ("k", "3")],
    ));
    assert_eq!(got[0].0, s(target));
    assert!((got[0].1 - 1.0).abs() < 1e-4, "{}", got[0].1);
    // A picture and words together rank differently from the picture alone, and still answer.
    let both = hits(&post(
        &base,
        &[("k", "50"), ("q", "a blue square")],
        &std::fs::read(target).unwrap(),
    ));
    assert_eq!(both.len(), n);

    // Filters: a folder and its subfolders, one that holds nothing, and size bounds.
    let inside = hits(&get(
        &base,
        "/api/search",
        &[
            ("q", "a shape"),
            ("where", &format!("folder={}", s(&f.dir))),
            ("k", "50"),
        ],
    ));
    assert_eq!(inside.len(), n);
    // A sibling whose name is a prefix of the indexed folder's holds none of its pictures.
    std::fs::create_dir_all(f.dir.join("data/image")).unwrap();
    let none = hits(&get(
        &base,
        "/api/search",
        &[
            ("q", "a shape"),
            ("where", &format!("folder={}", s(&f.dir.join("data/image")))),
        ],
    ));
    assert!(none.is_empty());
    let small = hits(&get(
        &base,
        "/api/search",
        &[("q", "a shape"), ("where", "max_bytes=1"), ("k", "50")],
    ));
    assert!(small.is_empty());
    let all = hits(&get(
        &base,
        "/api/search",
        &[("q", "a shape"), ("where", "min_bytes=1"), ("k", "50")],
    ));
    assert_eq!(all.len(), n);

    // The picture itself, and a thumbnail that fits the size and is cached.
    let img = get(&base, "/api/image", &[("path", s(target))]);
    assert_eq!(img.status, 200);
    assert_eq!(img.content_type, "image/png");
    assert_eq!(img.body, std::fs::read(target).unwrap());
    let th = get(&base, "/api/thumb", &[("path", s(target)), ("size", "20")]);
    assert_eq!(th.status, 200);
    assert_eq!(th.content_type, "image/jpeg");
    let t = tuwen::image::load_from_memory(&th.body).unwrap();
    assert_eq!((t.width(), t.height()), (20, 20));
    let cache = f.dir.join("index.db.thumbs");
    let cached: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(cached.len(), 1);
    let again = get(&base, "/api/thumb", &[("path", s(target)), ("size", "20")]);
    assert_eq!(again.body, th.body);

    // Refusals. `..` out of the folder, an absolute path elsewhere, a link that leads out.
    let secret = f.dir.join("secret.png");
    std::fs::copy(target, &secret).unwrap();
    let up = format!("{}/../../secret.png", s(&f.images));
    for route in ["/api/image", "/api/thumb"] {
        get(&base, route, &[("path", &up)]).error(403, "outside the indexed folders");
        get(&base, route, &[("path", "/etc/passwd")]).error(403, "outside the indexed folders");
    }
    let link = f.images.join("escape.png");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    get(&base, "/api/image", &[("path", s(&link))]).error(403, "outside the indexed folders");
    get(&base, "/api/search", &[("like", s(&link))]).error(403, "outside the indexed folders");
    // Inside the folder but never indexed; missing; no path at all.
    let fresh = f.images.join("fresh.png");
    std::fs::copy(target, &fresh).unwrap();
    get(&base, "/api/image", &[("path", s(&fresh))]).error(404, "not in the index");
    get(&base, "/api/thumb", &[("path", s(&fresh))]).error(404, "not in the index");
    get(
        &base,
        "/api/image",
        &[("path", s(&f.images.join("gone.png")))],
    )
    .error(404, "no such file");
    get(&base, "/api/image", &[]).error(400, "path=");
    // Uploads: over the limit, not an image, empty.
    // The server answers 413 and closes without reading the rest, so the client may see its
    // write cut off (a broken pipe) instead of the answer: retry until it reads the answer.
    let too_big = vec![0u8; (64 << 10) + 1];
    let answer = (0..20)
        .find_map(|_| {
            let r = ureq::post(&format!("{base}/api/search")).send_bytes(&too_big);
            match r {
                Err(ureq::Error::Transport(_)) => None,
                r => Some(reply(r)),
            }
        })
        .expect("the 413 answer arrives within 20 tries");
    answer.error(413, "larger than 65536 bytes");
    post(&base, &[], b"not an image").error(400, "not an image");
    post(&base, &[], b"").error(400, "POST an image");
    // Parameters.
    get(&base, "/api/search", &[]).error(400, "q=TEXT");
    get(&base, "/api/search", &[("q", "x"), ("k", "0")]).error(400, "k=0");
    get(&base, "/api/search", &[("q", "x"), ("where", "colour=red")]).error(400, "colour");
    get(
        &base,
        "/api/thumb",
        &[("path", s(target)), ("size", "5000")],
    )
    .error(400, "size=5000");

    // The page is there, and names the API it calls.
    let page = get(&base, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert!(String::from_utf8_lossy(&page.body).contains("/api/search"));
    std::fs::remove_dir_all(&f.dir).unwrap();
}
