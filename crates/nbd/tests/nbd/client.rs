//! A small NBD client written from the protocol document, independent of the crate's encoders,
//! plus a harness that runs `serve` on 127.0.0.1:0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use strata_nbd::{consts, ExportProvider, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<std::io::Result<()>>,
}

pub async fn start(exports: Arc<dyn ExportProvider>) -> Server {
    start_with(exports, ServerConfig::default()).await
}

pub async fn start_with(exports: Arc<dyn ExportProvider>, config: ServerConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(strata_nbd::serve_with(
        listener,
        exports,
        config,
        shutdown.clone(),
    ));
    Server {
        addr,
        shutdown,
        task,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    Simple {
        cookie: u64,
        error: u32,
        data: Vec<u8>,
    },
    Chunk {
        cookie: u64,
        flags: u16,
        kind: u16,
        payload: Vec<u8>,
    },
}

impl Msg {
    pub fn cookie(&self) -> u64 {
        match self {
            Msg::Simple { cookie, .. } | Msg::Chunk { cookie, .. } => *cookie,
        }
    }
}

pub struct Client {
    pub io: BufReader<TcpStream>,
    /// Reads in flight without structured replies: their data length.
    simple_reads: HashMap<u64, u32>,
    pub structured: bool,
}

impl Client {
    /// Connects and completes the greeting with the given client flags.
    pub async fn connect_with(addr: SocketAddr, flags: u32) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = Client {
            io: BufReader::new(stream),
            simple_reads: HashMap::new(),
            structured: false,
        };
        let mut greeting = [0u8; 18];
        c.io.read_exact(&mut greeting).await.expect("greeting");
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(u16::from_be_bytes([greeting[16], greeting[17]]), 3);
        c.io.get_mut()
            .write_all(&flags.to_be_bytes())
            .await
            .expect("flags");
        c
    }

    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_with(addr, 3).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.expect("send");
    }

    pub async fn send_option(&mut self, code: u32, data: &[u8]) {
        let mut v = consts::IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        self.send_raw(&v).await;
    }

    /// Reads one option reply: (option, reply type, data).
    pub async fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let magic = self.io.read_u64().await.expect("reply magic");
        assert_eq!(magic, consts::OPT_REPLY_MAGIC);
        let option = self.io.read_u32().await.expect("option");
        let kind = self.io.read_u32().await.expect("kind");
        let len = self.io.read_u32().await.expect("len");
        let mut data = vec![0; len as usize];
        self.io.read_exact(&mut data).await.expect("data");
        (option, kind, data)
    }

    /// Sends an option and collects replies up to the final one (ACK or error).
    pub async fn option(&mut self, code: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        self.send_option(code, data).await;
        let mut replies = Vec::new();
        loop {
            let (option, kind, data) = self.option_reply().await;
            assert_eq!(option, code);
            let last = kind == consts::REP_ACK || kind & 0x8000_0000 != 0;
            replies.push((kind, data));
            if last {
                return replies;
            }
        }
    }

    pub async fn structured_reply(&mut self) {
        let r = self.option(consts::OPT_STRUCTURED_REPLY, &[]).await;
        assert_eq!(r, vec![(consts::REP_ACK, vec![])]);
        self.structured = true;
    }

    pub async fn set_meta(&mut self, export: &str, queries: &[&str]) -> Vec<(u32, Vec<u8>)> {
        self.option(consts::OPT_SET_META_CONTEXT, &meta_data(export, queries))
            .await
    }

    /// `NBD_OPT_GO` (or INFO with `go = false`); returns all replies.
    pub async fn info(&mut self, go: bool, name: &str, items: &[u16]) -> Vec<(u32, Vec<u8>)> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&(items.len() as u16).to_be_bytes());
        for i in items {
            data.extend_from_slice(&i.to_be_bytes());
        }
        let code = if go { consts::OPT_GO } else { consts::OPT_INFO };
        self.option(code, &data).await
    }

    /// GO that must succeed; returns (size, transmission flags).
    pub async fn go(&mut self, name: &str) -> (u64, u16) {
        let replies = self.info(true, name, &[consts::INFO_BLOCK_SIZE]).await;
        assert_eq!(
            replies.last().map(|r| r.0),
            Some(consts::REP_ACK),
            "{replies:?}"
        );
        export_info(&replies).expect("NBD_INFO_EXPORT")
    }

    pub async fn request(
        &mut self,
        flags: u16,
        cmd: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut v = consts::REQUEST_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&cmd.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(payload);
        if cmd == consts::CMD_READ && !self.structured {
            self.simple_reads.insert(cookie, len);
        }
        self.send_raw(&v).await;
    }

    /// Reads one reply message (a simple reply or one structured chunk).
    pub async fn reply(&mut self) -> Msg {
        let magic = self.io.read_u32().await.expect("reply magic");
        match magic {
            consts::SIMPLE_REPLY_MAGIC => {
                let error = self.io.read_u32().await.expect("error");
                let cookie = self.io.read_u64().await.expect("cookie");
                let len = self.simple_reads.remove(&cookie).unwrap_or(0);
                let mut data = vec![0; if error == 0 { len as usize } else { 0 }];
                self.io.read_exact(&mut data).await.expect("data");
                Msg::Simple {
                    cookie,
                    error,
                    data,
                }
            }
            consts::STRUCTURED_REPLY_MAGIC => {
                let flags = self.io.read_u16().await.expect("flags");
                let kind = self.io.read_u16().await.expect("type");
                let cookie = self.io.read_u64().await.expect("cookie");
                let len = self.io.read_u32().await.expect("len");
                let mut payload = vec![0; len as usize];
                self.io.read_exact(&mut payload).await.expect("payload");
                Msg::Chunk {
                    cookie,
                    flags,
                    kind,
                    payload,
                }
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    /// Reads a whole read reply (structured or simple) and returns the data or the errno.
    pub async fn read_result(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        match self.reply().await {
            Msg::Simple { error: 0, data, .. } => Ok(data),
            Msg::Simple { error, .. } => Err(error),
            Msg::Chunk {
                flags,
                kind,
                payload,
                ..
            } => {
                assert_eq!(flags & consts::REPLY_FLAG_DONE, 1, "one chunk per reply");
                match kind {
                    consts::REPLY_TYPE_OFFSET_DATA => {
                        assert_eq!(
                            u64::from_be_bytes(payload[..8].try_into().expect("8")),
                            offset
                        );
                        assert_eq!(payload.len() - 8, len as usize);
                        Ok(payload[8..].to_vec())
                    }
                    consts::REPLY_TYPE_OFFSET_HOLE => {
                        assert_eq!(
                            u64::from_be_bytes(payload[..8].try_into().expect("8")),
                            offset
                        );
                        let hole = u32::from_be_bytes(payload[8..12].try_into().expect("4"));
                        assert_eq!(hole, len);
                        Ok(vec![0; len as usize])
                    }
                    consts::REPLY_TYPE_NONE => Ok(vec![]),
                    consts::REPLY_TYPE_ERROR => Err(errno_of(&payload)),
                    other => panic!("unexpected chunk type {other}"),
                }
            }
        }
    }

    /// Reads a reply without data; `Ok` or the errno.
    pub async fn status(&mut self) -> Result<(), u32> {
        match self.reply().await {
            Msg::Simple { error: 0, .. } => Ok(()),
            Msg::Simple { error, .. } => Err(error),
            Msg::Chunk {
                kind: consts::REPLY_TYPE_ERROR,
                payload,
                ..
            } => Err(errno_of(&payload)),
            Msg::Chunk {
                kind: consts::REPLY_TYPE_NONE,
                ..
            } => Ok(()),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// True if the server closed the connection (EOF) before sending anything more.
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), self.io.read(&mut byte));
        matches!(read.await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

pub fn errno_of(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().expect("errno"))
}

pub fn meta_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = (export.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

/// (size, flags) from the `NBD_INFO_EXPORT` reply among `replies`.
pub fn export_info(replies: &[(u32, Vec<u8>)]) -> Option<(u64, u16)> {
    replies.iter().find_map(|(kind, d)| {
        (*kind == consts::REP_INFO && d[..2] == [0, 0]).then(|| {
            (
                u64::from_be_bytes(d[2..10].try_into().expect("8")),
                u16::from_be_bytes([d[10], d[11]]),
            )
        })
    })
}
