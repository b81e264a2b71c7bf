//! The library's error type: every failure a user can cause ends here, as one readable line.

use std::path::PathBuf;

/// Everything that can go wrong in tuwen, each variant with a message fit for one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the operating system said (in the message, not repeated as a cause).
        error: std::io::Error,
    },
    /// A config file (config.json, preprocessor_config.json) is malformed or inconsistent.
    #[error("bad config {path}: {message}")]
    Config {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// config.json names a model type or architecture tuwen does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The weights file does not fit the model its config describes.
    #[error("bad weights {path}: {message}")]
    Weights {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An image could not be decoded.
    #[error("cannot decode image {path}: {message}")]
    Image {
        /// The file involved.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// A model repo id could not be resolved (offline and not cached, or not on the hub).
    #[error("{0}")]
    Hub(String),
    /// A number, a size or an option is out of range or malformed.
    #[error("{0}")]
    InvalidInput(String),
    /// A request for something deliberately withheld (a file outside the folders a server
    /// may show).
    #[error("{0}")]
    Forbidden(String),
    /// The requested device is not compiled in or not available.
    #[error("{0}")]
    Device(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }

    /// An [`Error::Config`] for `path`.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
