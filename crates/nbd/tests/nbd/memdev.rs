//! An in-memory `BlockDevice` and `ExportProvider` for tests: a `Vec<u8>` behind a mutex, with
//! 4 KiB allocation tracking for block status, a call counter, an injectable failure, and a gate
//! that holds reads at one offset until the test releases them (to force out-of-order replies).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use strata_nbd::{BlockDevice, ExportInfo, ExportProvider, Extent, IoError, OpenError};
use tokio::sync::Semaphore;

pub const BLOCK: u64 = 4096;

pub struct MemDevice {
    data: Mutex<(Vec<u8>, Vec<bool>)>,
    read_only: bool,
    pub calls: AtomicU64,
    pub flushes: AtomicU64,
    pub fail: AtomicBool,
    pub gated_offset: AtomicU64,
    pub gate: Semaphore,
}

impl MemDevice {
    pub fn new(size: u64, read_only: bool) -> Arc<MemDevice> {
        let blocks = size.div_ceil(BLOCK) as usize;
        Arc::new(MemDevice {
            data: Mutex::new((vec![0; size as usize], vec![false; blocks])),
            read_only,
            calls: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            fail: AtomicBool::new(false),
            gated_offset: AtomicU64::new(u64::MAX),
            gate: Semaphore::new(0),
        })
    }

    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().expect("lock").0.clone()
    }

    fn enter(&self) -> Result<(), IoError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(IoError::Io("injected failure".into()));
        }
        Ok(())
    }

    fn fill(&self, offset: u64, len: u64, bytes: Option<&[u8]>, allocate: bool) {
        let mut guard = self.data.lock().expect("lock");
        let (data, alloc) = &mut *guard;
        let range = offset as usize..(offset + len) as usize;
        match bytes {
            Some(b) => data[range].copy_from_slice(b),
            None => data[range].fill(0),
        }
        if len > 0 {
            for block in offset / BLOCK..=(offset + len - 1) / BLOCK {
                alloc[block as usize] = allocate;
            }
        }
    }
}

#[async_trait]
impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.lock().expect("lock").0.len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        self.enter()?;
        if offset == self.gated_offset.load(Ordering::SeqCst) {
            let _ = self
                .gate
                .acquire()
                .await
                .map_err(|e| IoError::Io(e.to_string()))?;
        }
        let guard = self.data.lock().expect("lock");
        Ok(Bytes::copy_from_slice(
            &guard.0[offset as usize..offset as usize + len as usize],
        ))
    }
    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), IoError> {
        self.enter()?;
        self.fill(offset, data.len() as u64, Some(&data), true);
        Ok(())
    }
    async fn flush(&self) -> Result<(), IoError> {
        self.enter()?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), IoError> {
        self.enter()?;
        self.fill(offset, u64::from(len), None, false);
        Ok(())
    }
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        _fua: bool,
        no_hole: bool,
    ) -> Result<(), IoError> {
        self.enter()?;
        self.fill(offset, u64::from(len), None, no_hole);
        Ok(())
    }
    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        self.enter()?;
        let guard = self.data.lock().expect("lock");
        let size = guard.0.len() as u64;
        let end = (offset + u64::from(len)).min(size);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let block_end = ((pos / BLOCK + 1) * BLOCK).min(size);
            let hole = !guard.1[(pos / BLOCK) as usize];
            let run = (block_end - pos) as u32;
            match out.last_mut() {
                Some(last) if last.hole == hole => last.len += run,
                _ => out.push(Extent {
                    len: run,
                    hole,
                    zero: hole,
                }),
            }
            pos = block_end;
        }
        Ok(out)
    }
}

/// Exports by name.
#[derive(Default)]
pub struct MemExports {
    pub devices: Mutex<BTreeMap<String, Arc<MemDevice>>>,
}

impl MemExports {
    pub fn with(exports: &[(&str, Arc<MemDevice>)]) -> Arc<MemExports> {
        let map = exports
            .iter()
            .map(|(n, d)| (n.to_string(), d.clone()))
            .collect();
        Arc::new(MemExports {
            devices: Mutex::new(map),
        })
    }
}

#[async_trait]
impl ExportProvider for MemExports {
    async fn list(&self) -> Vec<ExportInfo> {
        let devices = self.devices.lock().expect("lock");
        devices
            .keys()
            .map(|name| ExportInfo {
                name: name.clone(),
                description: format!("test {name}"),
            })
            .collect()
    }
    async fn open(
        &self,
        name: &str,
        _client: strata_nbd::Client,
    ) -> Result<Arc<dyn BlockDevice>, OpenError> {
        if name == "denied" {
            return Err(OpenError::Denied("not for you".into()));
        }
        let devices = self.devices.lock().expect("lock");
        match devices.get(name) {
            Some(d) => Ok(d.clone() as Arc<dyn BlockDevice>),
            None => Err(OpenError::Unknown),
        }
    }
}
