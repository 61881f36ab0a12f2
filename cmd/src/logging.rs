//! Logging (tracing, human or JSON on stderr) and the panic hook.

use std::backtrace::Backtrace;

use anyhow::Result;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the subscriber: `RUST_LOG` when set, else `level`.
pub fn init(format: LogFormat, level: &str) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(v)?,
        _ => EnvFilter::try_new(level)?,
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    install_panic_hook();
    Ok(())
}

/// A panic anywhere logs one structured `PANIC` event (location, message,
/// thread, backtrace) and also writes it to stderr, so it is never lost
/// when the logger itself is the problem.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "unknown".into());
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        let backtrace = Backtrace::force_capture().to_string();
        tracing::error!(
            target: "engram::panic",
            location = %location,
            thread = %thread,
            panic_message = %message,
            backtrace = %backtrace,
            "PANIC"
        );
        eprintln!("PANIC in thread {thread} at {location}: {message}\n{backtrace}");
    }));
}
