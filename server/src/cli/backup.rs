//! `ferromq backup` (download a hot backup from a running server, verifying it as it
//! arrives) and `ferromq restore` (write a backup into an empty data directory, verify every
//! checksum, and run strict recovery on the result).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use engine::backup::{self, BackupEvent};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::json;

use super::{AdminClient, ServerArgs, table};

fn progress_bar(len: Option<u64>) -> ProgressBar {
    match len {
        Some(n) => {
            let pb = ProgressBar::new(n);
            pb.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("a valid progress template")
                .progress_chars("=> "),
            );
            pb
        }
        None => ProgressBar::new_spinner(),
    }
}

/// Copies what it reads to `out` and advances the progress bar.
struct Tee<'a, R: Read> {
    inner: R,
    out: &'a mut File,
    pb: &'a ProgressBar,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        self.pb.inc(n as u64);
        Ok(n)
    }
}

/// Advances the progress bar as it reads.
struct Counting<'a, R: Read> {
    inner: R,
    pb: &'a ProgressBar,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pb.inc(n as u64);
        Ok(n)
    }
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

/// Downloads a backup to `output` (which must not exist): first to `output.partial`,
/// checked as it arrives, then synced and renamed.
pub fn backup(server: &ServerArgs, output: &Path) -> anyhow::Result<()> {
    if output.exists() {
        bail!(
            "{} already exists; choose a new file name",
            output.display()
        );
    }
    let c = AdminClient::new(server, None)?;
    let partial = partial_path(output);
    // 0600: a backup holds every message and the credentials' records. Made before the
    // request, so that a leftover file does not start a stream on the server for nothing.
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists: a backup to {} is running, or one was interrupted (then remove it \
             and run again)",
            partial.display(),
            output.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("creating {}", partial.display())),
    };
    let resp = match c.send(Method::GET, "/3/admin/backup", None) {
        Ok(r) => r,
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let pb = progress_bar(resp.content_length());
    pb.set_message("backup");
    let outcome = (|| -> anyhow::Result<backup::BackupHeader> {
        let mut tee = Tee {
            inner: resp,
            out: &mut file,
            pb: &pb,
        };
        let header = backup::read_backup(&mut tee, &mut |_: BackupEvent<'_>| Ok(()))
            .context("the backup stream is incomplete or damaged")?;
        file.sync_all()
            .with_context(|| format!("syncing {}", partial.display()))?;
        std::fs::rename(&partial, output)
            .with_context(|| format!("renaming to {}", output.display()))?;
        if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).ok();
        }
        Ok(header)
    })();
    pb.finish_and_clear();
    let header = match outcome {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    println!(
        "backup written to {}: {bytes} bytes, {} segment(s) ({}..={}), cut at segment {} offset {}, every checksum verified",
        output.display(),
        header.segment_count,
        header.first_segment().0,
        header.cut.segment().0,
        header.cut.segment().0,
        header.cut.offset(),
    );
    Ok(())
}

/// Restores `input` into `data_dir` (absent or empty) and reports what recovery found.
pub fn restore(input: &Path, data_dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let file = File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let len = file.metadata().map(|m| m.len()).ok();
    let pb = progress_bar(len);
    pb.set_message("restore");
    let mut reader = Counting {
        inner: io::BufReader::with_capacity(1 << 20, file),
        pb: &pb,
    };
    let result = backup::restore(&mut reader, data_dir);
    pb.finish_and_clear();
    let report = result
        .with_context(|| format!("restoring {} into {}", input.display(), data_dir.display()))?;
    let ins = &report.inspection;
    let h = &report.header;
    if json_out {
        let queues: Vec<_> = ins
            .queues
            .iter()
            .map(|q| {
                json!({
                    "project_id": q.project, "name": q.name, "size": q.size,
                    "reserved": q.reserved, "delayed": q.delayed,
                    "total_messages": q.total_messages,
                })
            })
            .collect();
        let v = json!({
            "data_dir": data_dir.display().to_string(),
            "segments": ins.segments,
            "bytes_written": report.bytes_written,
            "cut": { "segment": h.cut.segment().0, "offset": h.cut.offset() },
            "segment_bytes": h.segment_bytes,
            "body_bytes_max": h.body_bytes_max,
            "queues": queues,
            "messages": ins.messages,
            "metadata_entries": ins.meta_entries,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = ins
        .queues
        .iter()
        .map(|q| {
            vec![
                q.project.clone(),
                q.name.clone(),
                q.size.to_string(),
                q.reserved.to_string(),
                q.delayed.to_string(),
                q.total_messages.to_string(),
            ]
        })
        .collect();
    println!(
        "restored {} segment(s) ({} bytes) into {}; every checksum verified; strict recovery \
         ended at the backup's cut (segment {} offset {})",
        ins.segments,
        report.bytes_written,
        data_dir.display(),
        h.cut.segment().0,
        h.cut.offset()
    );
    println!(
        "{} queue(s), {} message(s), {} metadata entries (projects, tokens)",
        ins.queues.len(),
        ins.messages,
        ins.meta_entries
    );
    if !rows.is_empty() {
        print!(
            "{}",
            table(
                &["PROJECT", "QUEUE", "SIZE", "RESERVED", "DELAYED", "TOTAL"],
                &rows
            )
        );
    }
    println!(
        "start it with segment_bytes = {} and body_bytes_max >= {} (the source's settings)",
        h.segment_bytes, h.body_bytes_max
    );
    Ok(())
}
