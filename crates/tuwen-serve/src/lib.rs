//! `tuwen serve`: a web page and a JSON API over an index that `tuwen index` built.
//!
//! | route | what it answers |
//! |---|---|
//! | `GET /` | the page: a search box, an image upload, a grid of thumbnails; a click shows the picture with "more like this" |
//! | `GET /api/health` | `{"status": "ok", "images": n, "model": folder, "folders": [...]}` |
//! | `GET /api/search?q=TEXT&k=K&where=FILTER` | `{"hits": [{"path", "score"}, ...]}` best first, as `tuwen search --json` |
//! | `GET /api/search?like=PATH&k=K` | images like an indexed one (its stored embedding; `q` may be added) |
//! | `POST /api/search?q=&k=&where=` | the body is an image (at most `max_upload` bytes): images like it, with `q` if given |
//! | `GET /api/image?path=P` | an indexed picture's bytes |
//! | `GET /api/thumb?path=P&size=S` | the picture shrunk to fit S×S (16..=1024, default 256) as JPEG, cached on disk by content hash |
//!
//! Errors are `{"error": "one line"}` with 400 (bad request), 403 (a path outside the indexed
//! folders, symbolic links followed), 404 (not indexed, or gone), 413 (upload too large) or 500.
//! Only files that are inside the indexed folders **and** in the index are ever read
//! ([`tuwen::search::servable`]). The model runs on blocking threads, one query at a time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::pipeline::ImageText;
use tuwen::search::{Filter, Index, combine, servable};
use tuwen::{Error, Result};

/// The page, one self-contained file.
const PAGE: &str = include_str!("page.html");

/// Results a query may ask for.
const MAX_K: usize = 1000;

/// What [`Server::open`] needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The index (`tuwen index --db`).
    pub db: PathBuf,
    /// The model (folder or HF repo id); default the one the index was built with.
    pub model: Option<String>,
    /// Largest image upload accepted, in bytes.
    pub max_upload: usize,
    /// Where thumbnails are cached; default `<db>.thumbs` beside the index.
    pub thumbs: Option<PathBuf>,
}

impl Config {
    /// The defaults for an index: its own model, uploads up to 16 MiB.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        Config {
            db: db.into(),
            model: None,
            max_upload: 16 << 20,
            thumbs: None,
        }
    }
}

/// The server's state: the index, its model and the folders it may show.
pub struct Server {
    index: Mutex<Index>,
    model: Mutex<ImageText>,
    model_folder: PathBuf,
    roots: Vec<PathBuf>,
    thumbs: PathBuf,
    max_upload: usize,
}

impl Server {
    /// Opens the index and loads its model (another model than the index's is refused).
    pub fn open(config: &Config, device: &Device) -> Result<Self> {
        if !config.db.is_file() {
            return Err(Error::InvalidInput(format!(
                "{}: no such index (make one with tuwen index)",
                config.db.display()
            )));
        }
        let index = Index::open(&config.db)?;
        let folder = match (&config.model, index.meta("model")?) {
            (Some(m), _) => canonical(&tuwen::hub::resolve(m)?)?,
            (None, Some(m)) => PathBuf::from(m),
            (None, None) => {
                return Err(Error::InvalidInput(format!(
                    "{} is empty: index some folders first",
                    config.db.display()
                )));
            }
        };
        index.check_model(&folder, &tuwen::search::model_fingerprint(&folder)?)?;
        let model = ImageText::load_folder(&folder, device)?;
        let roots = index.roots()?;
        let thumbs = config.thumbs.clone().unwrap_or_else(|| {
            let mut name = config.db.file_name().unwrap_or_default().to_os_string();
            name.push(".thumbs");
            config.db.with_file_name(name)
        });
        std::fs::create_dir_all(&thumbs).map_err(|e| Error::io(&thumbs, e))?;
        Ok(Server {
            index: Mutex::new(index),
            model: Mutex::new(model),
            model_folder: folder,
            roots,
            thumbs,
            max_upload: config.max_upload,
        })
    }

    /// The routes, over this state.
    pub fn router(self: Arc<Self>) -> Router {
        let limit = self.max_upload;
        Router::new()
            .route("/", get(page))
            .route("/api/health", get(health))
            .route("/api/search", get(search_get).post(search_post))
            .route("/api/image", get(image))
            .route("/api/thumb", get(thumb))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self)
    }

    /// Images in the index.
    pub fn len(&self) -> Result<usize> {
        lock(&self.index).len()
    }

    /// Whether the index holds no image.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

fn canonical(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).map_err(|e| Error::io(p, e))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves the index and model as they were (reads only).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves `server` on `listener` until Ctrl-C.
pub async fn serve(server: Arc<Server>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, server.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

/// Binds `addr` and serves until Ctrl-C, on a runtime of its own; `on_ready` hears the bound
/// address (port 0 picks a free one).
pub fn run(server: Server, addr: SocketAddr, on_ready: impl FnOnce(SocketAddr)) -> Result<()> {
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::InvalidInput(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::InvalidInput(format!("cannot listen on {addr}: {e}")))?;
        on_ready(bound);
        serve(Arc::new(server), listener)
            .await
            .map_err(|e| Error::InvalidInput(format!("server on {bound} failed: {e}")))
    })
}

/// The server's runtime. Its threads (the blocking ones run the model) flush denormal floats
/// to zero, as the CPU backend's pool does (`tuwen::device::flush_denormals`).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(tuwen::device::flush_denormals_here)
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start the server's runtime: {e}")))
}

/// A failed request: its status and one line.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::InvalidInput(_) | Error::Image { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// Runs blocking work (the model, SQLite, decoding) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("request failed: {e}"),
        )
    })?
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health(State(s): State<Arc<Server>>) -> ApiResult<Response> {
    blocking(move || {
        let images = s.len()?;
        Ok(axum::Json(json!({
            "status": "ok",
            "images": images,
            "model": s.model_folder,
            "folders": s.roots,
        }))
        .into_response())
    })
    .await
}

#[derive(Deserialize, Default)]
struct SearchParams {
    q: Option<String>,
    k: Option<usize>,
    #[serde(rename = "where")]
    filter: Option<String>,
    like: Option<String>,
}

impl SearchParams {
    fn k(&self) -> ApiResult<usize> {
        match self.k {
            None => Ok(24),
            Some(k) if (1..=MAX_K).contains(&k) => Ok(k),
            Some(k) => Err(bad(format!("k={k} must be in 1..={MAX_K}"))),
        }
    }

    fn filter(&self) -> ApiResult<Filter> {
        match self.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            Some(f) => Filter::parse(f).map_err(bad),
            None => Ok(Filter::default()),
        }
    }

    fn text(&self) -> Option<String> {
        self.q
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_string)
    }
}

fn hits(s: &Server, parts: Vec<Vec<f32>>, k: usize, filter: &Filter) -> ApiResult<Response> {
    let hits = lock(&s.index).search(&combine(&parts), k, filter)?;
    Ok(axum::Json(json!({ "hits": hits })).into_response())
}

async fn search_get(
    State(s): State<Arc<Server>>,
    Query(p): Query<SearchParams>,
) -> ApiResult<Response> {
    let (k, filter, text) = (p.k()?, p.filter()?, p.text());
    if text.is_none() && p.like.is_none() {
        return Err(bad("give q=TEXT, like=PATH, or POST an image"));
    }
    blocking(move || {
        let mut parts = Vec::new();
        if let Some(path) = &p.like {
            let real = servable(&lock(&s.index), &s.roots, path).map_err(not_found)?;
            let key = real.to_string_lossy();
            let (e, _) = lock(&s.index)
                .lookup(&key)?
                .ok_or_else(|| not_found(Error::InvalidInput(format!("{path:?}: not indexed"))))?;
            parts.push(e);
        }
        if let Some(t) = text {
            parts.push(lock(&s.model).encode_texts(&[t], 1)?.remove(0));
        }
        hits(&s, parts, k, &filter)
    })
    .await
}

async fn search_post(
    State(s): State<Arc<Server>>,
    Query(p): Query<SearchParams>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the image is larger than {} bytes", s.max_upload),
            )
        } else {
            bad(format!("cannot read the upload: {e}"))
        }
    })?;
    if body.is_empty() {
        return Err(bad("POST an image as the request body"));
    }
    let (k, filter, text) = (p.k()?, p.filter()?, p.text());
    blocking(move || {
        let model = lock(&s.model);
        let image = model
            .encode_image_bytes(&[&body], 1)
            .map_err(|e| bad(format!("the upload is not an image this server reads: {e}")))?
            .remove(0);
        let mut parts = vec![image];
        if let Some(t) = text {
            parts.push(model.encode_texts(&[t], 1)?.remove(0));
        }
        drop(model);
        hits(&s, parts, k, &filter)
    })
    .await
}

/// Files that are gone or not indexed are 404; a path outside the folders stays 403.
fn not_found(e: Error) -> ApiError {
    match e {
        Error::Forbidden(_) => e.into(),
        e => ApiError(StatusCode::NOT_FOUND, e.to_string()),
    }
}

#[derive(Deserialize)]
struct PathParams {
    path: Option<String>,
    size: Option<u32>,
}

impl PathParams {
    fn path(&self) -> ApiResult<&str> {
        self.path.as_deref().ok_or_else(|| bad("give path=P"))
    }
}

fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        _ => "application/octet-stream",
    }
}

async fn image(State(s): State<Arc<Server>>, Query(p): Query<PathParams>) -> ApiResult<Response> {
    let requested = p.path()?.to_string();
    let real = blocking(move || servable(&lock(&s.index), &s.roots, &requested).map_err(not_found))
        .await?;
    let bytes = tokio::fs::read(&real)
        .await
        .map_err(|e| not_found(Error::io(&real, e)))?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&real)),
            (header::CACHE_CONTROL, "private, max-age=60"),
        ],
        bytes,
    )
        .into_response())
}

async fn thumb(State(s): State<Arc<Server>>, Query(p): Query<PathParams>) -> ApiResult<Response> {
    let size = p.size.unwrap_or(256);
    if !(16..=1024).contains(&size) {
        return Err(bad(format!("size={size} must be in 16..=1024")));
    }
    let requested = p.path()?.to_string();
    let jpeg = blocking(move || {
        let real = servable(&lock(&s.index), &s.roots, &requested).map_err(not_found)?;
        let (_, hash) = lock(&s.index)
            .lookup(&real.to_string_lossy())?
            .ok_or_else(|| not_found(Error::InvalidInput(format!("{requested:?}: not indexed"))))?;
        // The content hash names the thumbnail: a changed file gets a new one once re-indexed.
        let cached = s.thumbs.join(format!("{hash}-{size}.jpg"));
        if let Ok(bytes) = std::fs::read(&cached) {
            return Ok(bytes);
        }
        let img = tuwen::data::decode::open_rgb(&real).map_err(not_found)?;
        let small = tuwen::image::DynamicImage::ImageRgb8(img).thumbnail(size, size);
        let mut out = Vec::new();
        small
            .to_rgb8()
            .write_to(
                &mut std::io::Cursor::new(&mut out),
                tuwen::image::ImageFormat::Jpeg,
            )
            .map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot encode a thumbnail: {e}"),
                )
            })?;
        // Atomic: a reader never sees half a thumbnail; a failed cache write still serves.
        if let Err(e) = tuwen::hub::write_atomic(&cached, &out) {
            tracing::warn!("thumbnail cache: {e}");
        }
        Ok(out)
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        jpeg,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    /// Blocking work (the model) runs on threads that flush denormals to zero.
    #[test]
    fn runtime_threads_flush_denormals() {
        let rt = super::runtime().unwrap();
        let (blocking, worker) = rt.block_on(async {
            let blocking = tokio::task::spawn_blocking(tuwen::device::flushes_denormals)
                .await
                .unwrap();
            let worker = tokio::spawn(async { tuwen::device::flushes_denormals() })
                .await
                .unwrap();
            (blocking, worker)
        });
        #[cfg(target_arch = "x86_64")]
        assert!(blocking && worker);
        let _ = (blocking, worker);
    }
}
