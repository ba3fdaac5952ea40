//! Writes a synthetic journal of the given size for measuring `kat report`
//! (docs/performance.md): `cargo run --release --example journal -- DIR
//! [SIZE]`, SIZE like `kat record --max-size` (default 256MiB).

#[path = "../benches/synthetic/mod.rs"]
mod synthetic;

use std::path::PathBuf;

use bytesize::ByteSize;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), size) = (args.next(), args.next()) else {
        anyhow::bail!("usage: journal DIR [SIZE]");
    };
    let size = match size {
        Some(s) => s
            .parse::<ByteSize>()
            .map_err(|e| anyhow::anyhow!("{s:?} is not a size: {e}"))?
            .as_u64(),
        None => 256 << 20,
    };
    let w = synthetic::write(&PathBuf::from(dir), u32::MAX, size);
    println!(
        "{} events, {} bytes in {} files",
        w.events, w.bytes, w.files
    );
    Ok(())
}
