//! The check of `proxy_wasm_config`: the plugins are compiled and started
//! once, in a child process, so that the master never creates an engine.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::sync::Arc;

use super::server::NgxServer;
use proxy_wasm_host::config::PluginConfig;
use proxy_wasm_host::host::ServerHost;
use proxy_wasm_host::loader::{self, PluginVms};

/// Compiles and starts the plugins once, in a child process, and reports the
/// first error (with file and key). The master itself never creates an engine.
pub fn validate_in_child(
    plugins: &[PluginConfig],
    entities: &[proxy_wasm_host::extism::entity::Entity],
    otoroshi: Option<&proxy_wasm_host::extism::entity::document::Settings>,
) -> Result<(), String> {
    if plugins.is_empty() && entities.is_empty() {
        return Ok(());
    }
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two descriptors we own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("cannot validate the plugins: pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: nginx reads its configuration in a single thread, so the child
    // starts in a consistent state; it only compiles and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // SAFETY: closing the descriptors we own.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return Err(format!("cannot validate the plugins: fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: the child owns fds[1] (fds[0] is the parent's).
        unsafe { libc::close(fds[0]) };
        let outcome = std::panic::catch_unwind(|| {
            check_plugins(plugins)?;
            // The entities: read, compiled, linked (only what each grants) and started once.
            proxy_wasm_host::chain::extism::load_entity_links(
                entities,
                otoroshi,
                plugins,
                Arc::new(proxy_wasm_host::chain::extism::ServerLog(super::base::log)),
                true,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|_| Err("internal error (panic) validating the plugins".into()));
        // SAFETY: fds[1] is ours; File takes it over.
        let mut out = unsafe { std::fs::File::from_raw_fd(fds[1]) };
        let code = match outcome {
            Ok(()) => 0,
            Err(e) => {
                let _ = out.write_all(e.as_bytes());
                1
            }
        };
        drop(out);
        // SAFETY: leave without running the master's exit handlers.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: the parent owns fds[0].
    unsafe { libc::close(fds[1]) };
    // SAFETY: as above.
    let mut input = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut message = String::new();
    let _ = input.read_to_string(&mut message);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if !message.is_empty() {
        Err(message)
    } else {
        Err(format!("the plugin validation process ended abnormally (status {status})"))
    }
}

fn check_plugins(plugins: &[PluginConfig]) -> Result<(), String> {
    let loaded = loader::load(plugins).map_err(|e| e.to_string())?;
    let mut canary = PluginVms::start(&loaded, |_| Arc::new(NgxServer::canary()) as Arc<dyn ServerHost>)
        .map_err(|e| e.to_string())?;
    canary.shutdown();
    Ok(())
}
