//! Kernel modules for the initramfs: resolves the modules the guest checks need, with their
//! dependencies (the `depends=` of each module's `.modinfo` section, what depmod reads), in load
//! order, decompressed (Debian compresses them with xz from 6.x; the guest's busybox `insmod`
//! then needs no decompressor). In: a kernel's `lib/modules/<release>` and module names. Out:
//! [`Module`]s, dependencies first.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::process;

/// A module to load, decompressed.
pub struct Module {
    /// `nf_tables`.
    pub name: String,
    /// The `.ko` contents.
    pub data: Vec<u8>,
}

/// `names` and everything they depend on, dependencies first. A name that the kernel has built in
/// (modules.builtin) is left out; one it has neither way is an error.
pub fn resolve(dir: &Path, names: &[&str]) -> Result<Vec<Module>> {
    let index = index(&dir.join("kernel"))?;
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin
        .lines()
        .filter_map(|l| Path::new(l).file_name())
        .map(|f| module_name(&f.to_string_lossy()))
        .collect();
    let mut loaded = BTreeSet::new();
    let mut order = Vec::new();
    for name in names {
        let name = module_name(name);
        if !index.contains_key(&name) && builtin.contains(&name) {
            continue;
        }
        visit(&name, &index, &mut loaded, &mut order, 0)?;
    }
    Ok(order)
}

/// Depth-first: dependencies before the module.
fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    loaded: &mut BTreeSet<String>,
    order: &mut Vec<Module>,
    depth: usize,
) -> Result<()> {
    if loaded.contains(name) {
        return Ok(());
    }
    if depth > 32 {
        bail!("module dependency loop at {name}");
    }
    let path = index
        .get(name)
        .with_context(|| format!("the kernel has no module {name} (and does not build it in)"))?;
    let data = decompress(path)?;
    for dep in depends(&data).with_context(|| format!("reading {}", path.display()))? {
        visit(&dep, index, loaded, order, depth + 1)?;
    }
    loaded.insert(name.to_owned());
    order.push(Module {
        name: name.to_owned(),
        data,
    });
    Ok(())
}

/// Module name → file, for every `.ko[.xz|.zst|.gz]` under `dir`.
fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(file) = path.file_name().map(|f| f.to_string_lossy().into_owned())
                && file.contains(".ko")
            {
                out.insert(module_name(&file), path);
            }
        }
    }
    Ok(out)
}

/// `nf-tables.ko.xz` → `nf_tables` (module names use `_`; file names may use `-`).
fn module_name(file: &str) -> String {
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).with_context(|| format!("reading {name}"));
    };
    let mut cmd = Command::new(tool);
    cmd.arg("-dc").arg(path);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", process::describe(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", process::describe(&cmd), out.status);
    }
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo` section (NUL-separated `key=value` strings).
fn depends(ko: &[u8]) -> Result<Vec<String>> {
    let modinfo = section(ko, ".modinfo")?.context("no .modinfo section")?;
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|deps| deps.split(|&b| b == b','))
        .filter(|d| !d.is_empty())
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect())
}

/// The contents of the section called `name` in a 64-bit little-endian ELF file.
fn section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    let u16_at = |at: usize| -> Result<usize> {
        let b = elf.get(at..at + 2).context("truncated ELF")?;
        Ok(usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u64_at = |at: usize| -> Result<usize> {
        let b = elf.get(at..at + 8).context("truncated ELF")?;
        let v = u64::from_le_bytes(b.try_into()?);
        Ok(usize::try_from(v)?)
    };
    let u32_at = |at: usize| -> Result<usize> {
        let b = elf.get(at..at + 4).context("truncated ELF")?;
        Ok(usize::try_from(u32::from_le_bytes(b.try_into()?))?)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18)?;
    for i in 0..shnum {
        let h = header(i);
        let name_at = strtab + u32_at(h)?;
        let this = elf
            .get(name_at..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .context("bad section name")?;
        if this == name.as_bytes() {
            let (offset, size) = (u64_at(h + 0x18)?, u64_at(h + 0x20)?);
            return Ok(Some(
                elf.get(offset..offset + size)
                    .context("truncated section")?,
            ));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_use_underscores() {
        assert_eq!(module_name("nf-tables.ko.xz"), "nf_tables");
        assert_eq!(module_name("veth.ko"), "veth");
    }

    #[test]
    fn reads_depends_of_an_elf_module() {
        // A minimal ELF64: header, a .modinfo section and the section-name table.
        let modinfo = b"license=GPL\0depends=nfnetlink,libcrc32c\0name=nf_tables\0";
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 0x40];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_at = elf.len();
        elf.extend_from_slice(modinfo);
        let shstrtab_at = elf.len();
        elf.extend_from_slice(shstrtab);
        let shoff = elf.len();
        let mut sh = |name: u32, offset: usize, size: usize| {
            let mut h = vec![0u8; 0x40];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, modinfo_at, modinfo.len());
        sh(10, shstrtab_at, shstrtab.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(depends(&elf).unwrap(), ["nfnetlink", "libcrc32c"]);
        assert!(depends(b"not elf").is_err());
    }
}
