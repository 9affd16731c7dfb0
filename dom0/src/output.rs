//! Output formats (`-o table|json|jsonl`).
#![forbid(unsafe_code)]

use clap::ValueEnum;

/// How results are printed on stdout (CLI.md §5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text
    #[default]
    Table,
    /// One JSON document
    Json,
    /// One JSON object per line
    Jsonl,
}

impl OutputFormat {
    /// Whether the format is machine-readable (errors then go to stderr as JSON too).
    #[must_use]
    pub fn is_json(self) -> bool {
        matches!(self, Self::Json | Self::Jsonl)
    }
}
