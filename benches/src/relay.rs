//! `--rtt MS`: a loopback UDP relay (hidden subcommand `relay`, a child process) that holds
//! every datagram for half the round trip in each direction, so a client sees what a WAN link
//! of that round-trip time would cost. The delay is constant, so each direction stays a FIFO.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;

#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Where datagrams go (the server).
    #[arg(long)]
    pub to: SocketAddr,
    /// Round-trip time to add, in milliseconds (half each way).
    #[arg(long)]
    pub rtt_ms: f64,
}

type Delayed = (Instant, Vec<u8>, Option<SocketAddr>);

/// A thread that sends each datagram once its time has come, in arrival order.
fn delay_line(sock: UdpSocket) -> mpsc::Sender<Delayed> {
    let (tx, rx) = mpsc::channel::<Delayed>();
    std::thread::spawn(move || {
        while let Ok((due, data, to)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let _ = match to {
                Some(to) => sock.send_to(&data, to),
                None => sock.send(&data),
            };
        }
    });
    tx
}

/// Runs until stdin closes; prints `LISTEN <addr>` once bound.
pub fn run(args: RelayArgs) -> Result<()> {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let one_way = Duration::from_secs_f64(args.rtt_ms.max(0.0) / 2000.0);
    let front = UdpSocket::bind("127.0.0.1:0")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTEN {}", front.local_addr()?)?;
        out.flush()?;
    }
    let down = delay_line(front.try_clone()?);
    let mut upstreams: HashMap<SocketAddr, mpsc::Sender<Delayed>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = front.recv_from(&mut buf)?;
        let up = match upstreams.get(&from) {
            Some(up) => up.clone(),
            None => {
                // A new client: its own socket towards the server, and a thread for the answers.
                let sock = UdpSocket::bind("127.0.0.1:0")?;
                sock.connect(args.to)?;
                let back = sock.try_clone()?;
                let down = down.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = back.recv(&mut buf) {
                        if down.send((Instant::now() + one_way, buf[..n].to_vec(), Some(from))).is_err() {
                            break;
                        }
                    }
                });
                let up = delay_line(sock);
                upstreams.insert(from, up.clone());
                up
            }
        };
        let _ = up.send((Instant::now() + one_way, buf[..n].to_vec(), None));
    }
}
