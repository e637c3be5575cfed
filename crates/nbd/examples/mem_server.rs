//! A throwaway NBD server over an in-memory disk, for trying clients and benchmarking the
//! protocol layer by hand: `cargo run --release -p strata-nbd --example mem_server -- ADDR SIZE_MIB`
//! then e.g. `nbdinfo nbd://ADDR/` or fio's `nbd` engine. The export is the default one ("").

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use strata_nbd::{BlockDevice, ExportInfo, ExportProvider, Extent, IoError, OpenError};

/// Memory split in 1 MiB pieces so concurrent requests rarely contend on one lock.
struct MemDisk {
    pieces: Vec<RwLock<Vec<u8>>>,
}

const PIECE: u64 = 1 << 20;

impl MemDisk {
    fn each(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&RwLock<Vec<u8>>, usize, usize, usize),
    ) {
        let (mut pos, end, mut done) = (offset, offset + len, 0usize);
        while pos < end {
            let start = (pos % PIECE) as usize;
            let n = ((PIECE - pos % PIECE).min(end - pos)) as usize;
            f(&self.pieces[(pos / PIECE) as usize], start, n, done);
            pos += n as u64;
            done += n;
        }
    }
}

#[async_trait]
impl BlockDevice for MemDisk {
    fn size(&self) -> u64 {
        self.pieces.len() as u64 * PIECE
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        let mut out = vec![0u8; len as usize];
        self.each(offset, len.into(), |p, s, n, d| {
            let p = p.read().expect("lock");
            out[d..d + n].copy_from_slice(&p[s..s + n]);
        });
        Ok(out.into())
    }
    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), IoError> {
        self.each(offset, data.len() as u64, |p, s, n, d| {
            p.write().expect("lock")[s..s + n].copy_from_slice(&data[d..d + n]);
        });
        Ok(())
    }
    async fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), IoError> {
        self.write_zeroes(offset, len, false, false).await
    }
    // Nothing is ever deallocated here, so every range stays allocated (NO_HOLE or not).
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        _fua: bool,
        _no_hole: bool,
    ) -> Result<(), IoError> {
        self.each(offset, len.into(), |p, s, n, _| {
            p.write().expect("lock")[s..s + n].fill(0)
        });
        Ok(())
    }
    async fn block_status(&self, _offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        Ok(vec![Extent {
            len,
            hole: false,
            zero: false,
        }])
    }
}

struct One(Arc<MemDisk>);

#[async_trait]
impl ExportProvider for One {
    async fn list(&self) -> Vec<ExportInfo> {
        vec![ExportInfo {
            name: String::new(),
            description: "memory".into(),
        }]
    }
    async fn open(
        &self,
        name: &str,
        _client: strata_nbd::Client,
    ) -> Result<Arc<dyn BlockDevice>, OpenError> {
        match name {
            "" => Ok(self.0.clone()),
            _ => Err(OpenError::Unknown),
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:10809".into());
    let mib: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let disk = MemDisk {
        pieces: (0..mib)
            .map(|_| RwLock::new(vec![0; PIECE as usize]))
            .collect(),
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("serving {mib} MiB on {addr}");
    let token = tokio_util::sync::CancellationToken::new();
    strata_nbd::serve(listener, Arc::new(One(Arc::new(disk))), token).await
}
