//! A runtime of its own for a client's network I/O (the object store's
//! HTTP, the shared journal's PostgreSQL connections), so that the client
//! can be used from any thread or runtime (the server's, the query
//! engine's, a blocking read's, the ledger's threads) and outlives none
//! of them.

use std::future::Future;

/// Two I/O threads, shut down in the background when dropped.
#[derive(Debug)]
pub(crate) struct IoRuntime(Option<tokio::runtime::Runtime>);

impl IoRuntime {
    /// Starts the threads, named `name`.
    pub(crate) fn start(name: &str) -> std::io::Result<Self> {
        Ok(Self(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(name)
                .enable_all()
                .build()?,
        )))
    }

    /// The runtime's handle (`None` once it is shut down).
    pub(crate) fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }

    /// Runs `work` on the I/O threads and waits for it, from sync code on
    /// any thread; `None` if the threads stopped.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let handle = self.handle()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv().ok()
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another
        // runtime; its tasks are only network reads and writes.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
