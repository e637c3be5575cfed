//! A minimal blocking NBD client for tests that need what the real clients cannot do on
//! purpose: send out-of-range requests, count acknowledgements exactly, write with FUA one
//! request at a time. Fixed newstyle handshake, `NBD_OPT_GO`, simple replies only.

use std::io::{self, Read, Write};
use std::net::TcpStream;

const NBD_OPT_GO: u32 = 7;
const NBD_REP_ACK: u32 = 1;
const NBD_REP_INFO: u32 = 3;
const NBD_INFO_EXPORT: u16 = 0;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const FLAG_FUA: u16 = 1;

/// One connection to one export.
pub struct NbdClient {
    stream: TcpStream,
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags the server sent.
    pub flags: u16,
    next_handle: u64,
}

impl NbdClient {
    /// Connects to `addr` and opens `export`.
    pub fn connect(addr: &str, export: &str) -> io::Result<Self> {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello)?;
        if &hello[..8] != b"NBDMAGIC" || &hello[8..16] != b"IHAVEOPT" {
            return Err(io::Error::other("not an NBD newstyle server"));
        }
        s.write_all(&1u32.to_be_bytes())?; // NBD_FLAG_C_FIXED_NEWSTYLE
        let mut opt = Vec::new();
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(4 + export.len() as u32 + 2).to_be_bytes());
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt)?;
        let (mut size, mut flags) = (None, 0);
        loop {
            let mut head = [0u8; 20];
            s.read_exact(&mut head)?;
            let reply = u32::from_be_bytes(head[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len];
            s.read_exact(&mut body)?;
            match reply {
                NBD_REP_ACK => break,
                NBD_REP_INFO
                    if len >= 12 && u16::from_be_bytes([body[0], body[1]]) == NBD_INFO_EXPORT =>
                {
                    size = Some(u64::from_be_bytes(body[2..10].try_into().unwrap()));
                    flags = u16::from_be_bytes([body[10], body[11]]);
                }
                NBD_REP_INFO => {}
                err => {
                    return Err(io::Error::other(format!(
                        "option refused with {err:#x}: {}",
                        String::from_utf8_lossy(&body)
                    )))
                }
            }
        }
        Ok(Self {
            stream: s,
            size: size.ok_or_else(|| io::Error::other("no NBD_INFO_EXPORT"))?,
            flags,
            next_handle: 1,
        })
    }

    /// Sends one request and waits for its simple reply; returns the NBD error code (0 = ok).
    fn request(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        data: &[u8],
        out: &mut [u8],
    ) -> io::Result<u32> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(data);
        self.stream.write_all(&req)?;
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply)?;
        if u32::from_be_bytes(reply[0..4].try_into().unwrap()) != SIMPLE_REPLY_MAGIC {
            return Err(io::Error::other("bad reply magic"));
        }
        if u64::from_be_bytes(reply[8..16].try_into().unwrap()) != handle {
            return Err(io::Error::other("reply to another request"));
        }
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        if error == 0 && cmd == CMD_READ {
            self.stream.read_exact(out)?;
        }
        Ok(error)
    }

    /// Reads `len` bytes at `offset`; `Err` carries the NBD error code.
    pub fn read(&mut self, offset: u64, len: u32) -> io::Result<Result<Vec<u8>, u32>> {
        let mut buf = vec![0u8; len as usize];
        let e = self.request(CMD_READ, 0, offset, len, &[], &mut buf)?;
        Ok(if e == 0 { Ok(buf) } else { Err(e) })
    }

    /// Writes `data` at `offset`, with FUA if asked; returns the NBD error code.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> io::Result<u32> {
        let flags = if fua { FLAG_FUA } else { 0 };
        self.request(CMD_WRITE, flags, offset, data.len() as u32, data, &mut [])
    }

    /// Trims `len` bytes at `offset`; returns the NBD error code.
    pub fn trim(&mut self, offset: u64, len: u32) -> io::Result<u32> {
        self.request(CMD_TRIM, 0, offset, len, &[], &mut [])
    }

    /// Writes zeros over `len` bytes at `offset`; returns the NBD error code.
    pub fn write_zeroes(&mut self, offset: u64, len: u32) -> io::Result<u32> {
        self.request(CMD_WRITE_ZEROES, 0, offset, len, &[], &mut [])
    }

    /// Flushes; returns the NBD error code.
    pub fn flush(&mut self) -> io::Result<u32> {
        self.request(CMD_FLUSH, 0, 0, 0, &[], &mut [])
    }

    /// Waits up to `timeout` for the server to close the connection, sending nothing: true if
    /// it did (end of stream or a reset), false if it stayed open.
    pub fn closed_within(&mut self, timeout: std::time::Duration) -> io::Result<bool> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut byte = [0u8; 1];
        let result = match self.stream.read(&mut byte) {
            Ok(0) => Ok(true),
            Ok(_) => Err(io::Error::other("the server sent bytes nobody asked for")),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(true),
            Err(e) => Err(e),
        };
        self.stream.set_read_timeout(None)?;
        result
    }

    /// Disconnects politely.
    pub fn disconnect(mut self) {
        let mut req = Vec::new();
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&CMD_DISC.to_be_bytes());
        req.extend_from_slice(&[0u8; 20]);
        let _ = self.stream.write_all(&req);
    }
}
