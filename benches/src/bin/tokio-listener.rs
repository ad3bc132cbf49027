//! The runner-up of issue 15: the same listener semantics on tokio, for
//! the comparison in BENCHMARKS.md ("Event loops: mio against tokio"). Not
//! part of the product: `tessera serve` uses `engine::server` (mio).
//!
//! ```text
//! tokio-listener CONFIG DATA_DIR LISTEN [THREADS]
//! ```
//!
//! Same pipeline (built as `tessera serve` builds it, stand-in issuer),
//! same batching: everything one read returns is one batch, decided on
//! the runtime thread that read it; a batch whose approvals wait for the
//! journal waits on one durability thread and is encoded by the
//! connection's writer task, which coalesces what is queued into one
//! write. Per connection: a reader task and a writer task joined by a
//! bounded channel (the in-flight bound). Plain TCP only, no timeouts, no
//! admission: only the I/O model differs from the measured mio loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use engine::config::Config;
use engine::iso8583::framing::{next_frame, write_frame, Framing};
use engine::pipeline::Pipeline;
use engine::server::{Answers, ConnId, Handler, Peer, PendingAnswers};
use engine::vault::{OpenOptions, Vault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

type Headers = Vec<Option<[u8; 5]>>;

/// What the writer task of a connection receives.
enum Out {
    Now(Vec<Option<Vec<u8>>>, Headers),
    Durable(Box<dyn PendingAnswers>, Headers),
}

/// Batches per connection between its reader and its writer.
const QUEUE: usize = 64;
const READ: usize = 64 * 1024;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, data, listen, rest @ ..] = args.as_slice() else {
        return Err("usage: tokio-listener CONFIG DATA_DIR LISTEN [THREADS]".into());
    };
    let threads: usize = rest
        .first()
        .map_or(Ok(2), |t| t.parse())
        .map_err(|e| format!("{e}"))?;
    let (cfg, keys) = Config::load(&PathBuf::from(config)).map_err(|e| e.to_string())?;
    let cfg = Arc::new(cfg);
    let (vault, _) = Vault::open(
        &PathBuf::from(data),
        Arc::clone(&cfg),
        &keys,
        OpenOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let profiles = engine::profile::keys::load(&cfg, &keys)?;
    let pipeline = Arc::new(
        Pipeline::new(Arc::new(vault), profiles, cfg.listener.dialect).with_decline_log(false),
    );
    let framing = cfg.listener.framing;
    let max_frame = cfg.listener.max_frame;
    let listen: SocketAddr = listen.parse().map_err(|e| format!("{e}"))?;

    // The durability waiter: waits in decision order, then hands each
    // batch to its connection's writer.
    let (durable_tx, durable_rx) =
        crossbeam_channel::unbounded::<(Box<dyn PendingAnswers>, Headers, mpsc::Sender<Out>)>();
    std::thread::spawn(move || {
        for (mut p, headers, tx) in durable_rx {
            p.wait();
            let _ = tx.blocking_send(Out::Durable(p, headers));
        }
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_io()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("tokio-listener: listening on {listen} with {threads} threads");
        let mut next = 0u64;
        loop {
            let Ok((sock, addr)) = listener.accept().await else {
                continue;
            };
            let _ = sock.set_nodelay(true);
            next += 1;
            let peer = Peer {
                conn: ConnId(next),
                addr,
                identity: None,
            };
            let (rd, wr) = sock.into_split();
            let (tx, rx) = mpsc::channel::<Out>(QUEUE);
            tokio::spawn(writer(wr, rx, framing));
            tokio::spawn(reader(
                rd,
                tx,
                peer,
                Arc::clone(&pipeline),
                durable_tx.clone(),
                framing,
                max_frame,
            ));
        }
    })
}

async fn reader(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::Sender<Out>,
    peer: Peer,
    pipeline: Arc<Pipeline>,
    durable: crossbeam_channel::Sender<(Box<dyn PendingAnswers>, Headers, mpsc::Sender<Out>)>,
    framing: Framing,
    max_frame: usize,
) {
    let mut buf = vec![0u8; READ.max(2 * (max_frame + 16))];
    let mut have = 0;
    loop {
        let n = match rd.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let mut consumed = 0;
        let mut frames: Vec<&[u8]> = Vec::new();
        let mut headers: Headers = Vec::new();
        loop {
            match next_frame(framing, &buf[consumed..have], max_frame) {
                Ok(Some(f)) => {
                    consumed += f.consumed;
                    if !f.body.is_empty() {
                        frames.push(f.body);
                        headers.push(f.header);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let out = if frames.is_empty() {
            None
        } else {
            match pipeline.handle_batch_deferred(&peer, &frames) {
                Answers::Now(a) => Some(Out::Now(a, headers)),
                Answers::Later(p) => {
                    let _ = durable.send((p, headers, tx.clone()));
                    None
                }
            }
        };
        drop(frames);
        buf.copy_within(consumed..have, 0);
        have -= consumed;
        if let Some(out) = out {
            if tx.send(out).await.is_err() {
                return;
            }
        }
    }
}

async fn writer(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    framing: Framing,
) {
    let mut bytes = Vec::new();
    while let Some(first) = rx.recv().await {
        bytes.clear();
        let mut item = Some(first);
        while let Some(out) = item.take() {
            let (answers, headers) = match out {
                Out::Now(a, h) => (a, h),
                Out::Durable(p, h) => (p.release(), h),
            };
            for (a, h) in answers.iter().zip(&headers) {
                if let Some(a) = a {
                    let _ = write_frame(framing, *h, a, &mut bytes);
                }
            }
            // Coalesce whatever else is queued into the same write.
            item = rx.try_recv().ok();
        }
        if wr.write_all(&bytes).await.is_err() {
            return;
        }
    }
}
