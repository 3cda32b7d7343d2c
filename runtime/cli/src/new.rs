//! `weir new NAME --lang rust|python|js --template map|filter|count`: a stage
//! project that builds, tests and runs as generated: the stage, a native
//! unit test, a pipeline that uses it with a `weir test` of it, and a README
//! of the commands.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};

use crate::build::{Lang, sdk};

#[derive(clap::Args)]
pub(crate) struct NewArgs {
    /// The project's name, also its folder's: lower-case letters, digits,
    /// `-` and `_`, starting with a letter
    name: String,
    /// The stage's language
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// What the generated stage does: `map` upper-cases text, `filter` drops
    /// messages containing a configured word, `count` counts messages per key
    /// in durable state
    #[arg(long, value_enum, default_value_t = Template::Map)]
    template: Template,
    /// The folder to create the project in
    #[arg(long, default_value = ".", value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Template {
    Map,
    Filter,
    Count,
}

pub(crate) fn new(args: NewArgs) -> anyhow::Result<()> {
    let name = &args.name;
    ensure!(
        name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
        "project name `{name}`: use up to 64 lower-case letters, digits, `-` and `_`, starting with a letter"
    );
    let root = args.dir.join(name);
    ensure!(!root.exists(), "{} already exists", root.display());
    let lang = args.lang;
    let sdk = sdk::unpack()?;
    let files = project(name, lang, args.template, &sdk);
    for (path, text) in &files {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().expect("a file in a folder")).with_context(|| format!("creating {}", root.display()))?;
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    if lang == Lang::JavaScript {
        // What `npm install` would make of package.json's dependency: the
        // tests import "weir" from the SDK this weir carries.
        std::fs::create_dir_all(root.join("node_modules")).with_context(|| format!("creating {}/node_modules", root.display()))?;
        std::os::unix::fs::symlink(sdk.join("js"), root.join("node_modules/weir")).context("linking node_modules/weir to the SDK")?;
    }
    println!(
        "created {} ({} {} stage): {}",
        root.display(),
        lang.name(),
        format!("{:?}", args.template).to_lowercase(),
        files.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ")
    );
    println!("next: cd {} and see README.md", root.display());
    Ok(())
}

/// The project's files: (path in the project, contents).
fn project(name: &str, lang: Lang, template: Template, sdk: &Path) -> Vec<(&'static str, String)> {
    let (component, test, files): (String, &str, Vec<(&'static str, String)>) = match lang {
        Lang::Rust => {
            let crate_name = name.replace('-', "_");
            let manifest = format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
                 [dependencies]\n# The SDK this weir carries (`weir build` and `weir new` unpack it there).\n\
                 weir-sdk = {{ path = \"{}\" }}\n\n# A project of its own, even inside another Cargo workspace.\n[workspace]\n",
                sdk.join("rust").display()
            );
            let source = match template {
                Template::Map => RUST_MAP,
                Template::Filter => RUST_FILTER,
                Template::Count => RUST_COUNT,
            };
            (
                format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
                "cargo test",
                vec![("Cargo.toml", manifest), ("src/lib.rs", source.to_owned()), (".gitignore", "/target\n".into())],
            )
        }
        Lang::Python => {
            let (source, test) = match template {
                Template::Map => (PY_MAP, PY_MAP_TEST),
                Template::Filter => (PY_FILTER, PY_FILTER_TEST),
                Template::Count => (PY_COUNT, PY_COUNT_TEST),
            };
            let conftest = format!(
                "# Lets pytest import the weir SDK, as unpacked by `weir new` and `weir build`.\n\
                 import sys\n\nsys.path.insert(0, {:?})\n",
                sdk.join("python").display().to_string()
            );
            (
                format!("build/{name}.wasm"),
                "python3 -m pytest",
                vec![
                    ("stage.py", source.to_owned()),
                    ("test_stage.py", test.to_owned()),
                    ("conftest.py", conftest),
                    (".gitignore", "/build\n__pycache__/\n".into()),
                ],
            )
        }
        Lang::JavaScript => {
            let (source, test) = match template {
                Template::Map => (JS_MAP, JS_MAP_TEST),
                Template::Filter => (JS_FILTER, JS_FILTER_TEST),
                Template::Count => (JS_COUNT, JS_COUNT_TEST),
            };
            let package = format!(
                "{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"type\": \"module\",\n  \"scripts\": {{ \"test\": \"node --test\" }},\n  \
                 \"dependencies\": {{ \"weir\": \"file:{}\" }}\n}}\n",
                sdk.join("js").display()
            );
            (
                format!("build/{name}.wasm"),
                "node --test",
                vec![
                    ("stage.js", source.to_owned()),
                    ("stage.test.js", test.to_owned()),
                    ("package.json", package),
                    (".gitignore", "/build\n/node_modules\n".into()),
                ],
            )
        }
    };
    let config = if template == Template::Filter { "\n[stage.config]\ndrop_if_contains = \"debug\"\n" } else { "" };
    let pipeline = format!(
        "# Lines from standard input through the stage to standard output:\n\
         #   printf 'hello\\na debug line\\nhello\\n' | weir run pipeline.toml --drain\n\n\
         [pipeline]\nname = \"{name}\"\n\n[source]\ntype = \"stdin\"\n\n\
         [[stage]]\nname = \"{name}\"\nmodule = \"{component}\"\n{config}\n[[sink]]\ntype = \"stdout\"\n"
    );
    let needs = if lang == Lang::Python {
        "\nThe tests need pytest (`pip install pytest`); the stage itself needs nothing installed.\n"
    } else {
        ""
    };
    let readme = format!(
        "# {name}\n\nA [weir](https://example.invalid/weir) stage in {}, made with `weir new --template {}`.\n\n\
         ```\nweir build                 # the component: {component}\n{test:<26} # the stage's unit tests, natively\n\
         weir test pipeline.toml --input test/input.txt --expect test/expected.txt   # the pipeline, on test/input.txt\n\
         printf 'hello\\na debug line\\nhello\\n' | weir run pipeline.toml --drain\n```\n{needs}",
        lang.name(),
        format!("{template:?}").to_lowercase(),
    );
    let expected = match template {
        Template::Map => "HELLO\nA DEBUG LINE\nHELLO\n",
        Template::Filter => "hello\nhello\n",
        Template::Count => "hello=1\na debug line=1\nhello=2\n",
    };
    let mut all = files;
    all.push(("pipeline.toml", pipeline));
    all.push(("test/input.txt", "hello\na debug line\nhello\n".into()));
    all.push(("test/expected.txt", expected.into()));
    all.push(("README.md", readme));
    all
}

const RUST_MAP: &str = r#"//! Upper-cases text messages; rejects payloads that are not UTF-8.

use weir_sdk::{Config, Failure, Message, Output, Stage};

struct Map;

impl Stage for Map {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Map)
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        let upper = msg.text()?.to_uppercase();
        Ok(vec![Output::reply(&msg, upper)])
    }
}

weir_sdk::export!(Map);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::Harness;

    #[test]
    fn upper_cases_text() {
        let mut h = Harness::<Map>::new(&[]).unwrap();
        assert_eq!(h.handle(Message::new("hello")).unwrap()[0].payload, b"HELLO");
        assert!(matches!(h.handle(Message::new(vec![0xff])), Err(Failure::Reject(_))));
    }
}
"#;

const RUST_FILTER: &str = r#"//! Drops messages whose payload contains `drop_if_contains` (config).

use weir_sdk::{Config, Failure, Message, Output, Stage};

struct Filter {
    needle: String,
}

impl Stage for Filter {
    fn init(config: &Config) -> Result<Self, String> {
        Ok(Filter { needle: config.require("drop_if_contains")?.to_owned() })
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        if String::from_utf8_lossy(&msg.payload).contains(&self.needle) {
            weir_sdk::counter_add("dropped", 1);
            return Ok(vec![]);
        }
        Ok(vec![Output::forward(msg)])
    }
}

weir_sdk::export!(Filter);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::Harness;

    #[test]
    fn drops_what_contains_the_word() {
        let mut h = Harness::<Filter>::new(&[("drop_if_contains", "debug")]).unwrap();
        assert!(h.handle(Message::new("a debug line")).unwrap().is_empty());
        assert_eq!(h.handle(Message::new("hello")).unwrap()[0].payload, b"hello");
        assert_eq!(h.counter("dropped"), 1);
    }
}
"#;

const RUST_COUNT: &str = r#"//! Counts messages per key (the message key, else the payload) in durable
//! state, exactly once, and emits `key=count`.

use weir_sdk::{Config, Failure, Message, Output, Stage, state};

struct Count;

impl Stage for Count {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Count)
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        let key = msg.key.clone().unwrap_or_else(|| msg.payload.clone());
        let count = match state::get(&key) {
            Some(v) => u64::from_le_bytes(v.try_into().map_err(|_| Failure::Reject("corrupt counter".into()))?) + 1,
            None => 1,
        };
        state::put(&key, &count.to_le_bytes());
        let mut text = key;
        text.extend_from_slice(format!("={count}").as_bytes());
        Ok(vec![Output::new(text)])
    }
}

weir_sdk::export!(Count);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::Harness;

    #[test]
    fn counts_per_key() {
        let mut h = Harness::<Count>::new(&[]).unwrap();
        let out = h.handle_batch(vec![Message::new("a"), Message::new("b"), Message::new("a")]);
        let texts: Vec<Vec<u8>> = out.into_iter().map(|r| r.unwrap()[0].payload.clone()).collect();
        assert_eq!(texts, [b"a=1".to_vec(), b"b=1".to_vec(), b"a=2".to_vec()]);
    }
}
"#;

const PY_MAP: &str = r#""""Upper-cases text messages; rejects payloads that are not UTF-8."""

import weir


class Map(weir.Stage):
    def handle(self, msg):
        return [weir.Output.reply(msg, msg.text().upper())]


weir.export(Map)
"#;

const PY_MAP_TEST: &str = r#"import pytest
import weir
from weir.testing import Harness

from stage import Map


def test_upper_cases_text():
    h = Harness(Map)
    assert h.handle(weir.Message("hello"))[0].payload == b"HELLO"
    with pytest.raises(weir.Reject):
        h.handle(weir.Message(b"\xff"))
"#;

const PY_FILTER: &str = r#""""Drops messages whose payload contains `drop_if_contains` (config)."""

import weir


class Filter(weir.Stage):
    def init(self, config):
        self.needle = config.require("drop_if_contains").encode()

    def handle(self, msg):
        if self.needle in msg.payload:
            weir.counter_add("dropped", 1)
            return []
        return [weir.Output.forward(msg)]


weir.export(Filter)
"#;

const PY_FILTER_TEST: &str = r#"import weir
from weir.testing import Harness

from stage import Filter


def test_drops_what_contains_the_word():
    h = Harness(Filter, {"drop_if_contains": "debug"})
    assert h.handle(weir.Message("a debug line")) == []
    assert h.handle(weir.Message("hello"))[0].payload == b"hello"
    assert h.counter("dropped") == 1
"#;

const PY_COUNT: &str = r#""""Counts messages per key (the message key, else the payload) in durable
state, exactly once, and emits `key=count`."""

import weir


class Count(weir.Stage):
    def handle(self, msg):
        key = msg.key if msg.key is not None else msg.payload
        stored = weir.state.get(key)
        count = (int.from_bytes(stored, "little") if stored else 0) + 1
        weir.state.put(key, count.to_bytes(8, "little"))
        return [key + f"={count}".encode()]


weir.export(Count)
"#;

const PY_COUNT_TEST: &str = r#"import weir
from weir.testing import Harness

from stage import Count


def test_counts_per_key():
    h = Harness(Count)
    out = h.handle_batch([weir.Message("a"), weir.Message("b"), weir.Message("a")])
    assert [r[0].payload for r in out] == [b"a=1", b"b=1", b"a=2"]
"#;

const JS_MAP: &str = r#"// Upper-cases text messages; rejects payloads that are not UTF-8.
import { Output, Stage, exportStage } from "weir";

export class Map extends Stage {
  handle(msg) {
    return [Output.reply(msg, msg.text().toUpperCase())];
  }
}

exportStage(Map);
"#;

const JS_MAP_TEST: &str = r#"import assert from "node:assert/strict";
import { test } from "node:test";
import { Message, Reject } from "weir";
import { Harness } from "weir/testing";
import { Map } from "./stage.js";

test("upper-cases text", () => {
  const h = new Harness(Map);
  assert.equal(h.handle(new Message("hello"))[0].text(), "HELLO");
  assert.throws(() => h.handle(new Message(new Uint8Array([0xff]))), Reject);
});
"#;

const JS_FILTER: &str = r#"// Drops messages whose payload contains `drop_if_contains` (config).
import { Output, Stage, counterAdd, exportStage, text } from "weir";

export class Filter extends Stage {
  init(config) {
    this.needle = config.require("drop_if_contains");
  }

  handle(msg) {
    if (text(msg.payload).includes(this.needle)) {
      counterAdd("dropped", 1);
      return [];
    }
    return [Output.forward(msg)];
  }
}

exportStage(Filter);
"#;

const JS_FILTER_TEST: &str = r#"import assert from "node:assert/strict";
import { test } from "node:test";
import { Message } from "weir";
import { Harness } from "weir/testing";
import { Filter } from "./stage.js";

test("drops what contains the word", () => {
  const h = new Harness(Filter, { drop_if_contains: "debug" });
  assert.deepEqual(h.handle(new Message("a debug line")), []);
  assert.equal(h.handle(new Message("hello"))[0].text(), "hello");
  assert.equal(h.counter("dropped"), 1n);
});
"#;

const JS_COUNT: &str = r#"// Counts messages per key (the message key, else the payload) in durable
// state, exactly once, and emits `key=count`.
import { Stage, exportStage, state, text } from "weir";

export class Count extends Stage {
  handle(msg) {
    const key = msg.key ?? msg.payload;
    const stored = state.get(key);
    const count = (stored ? new DataView(stored.buffer, stored.byteOffset, 8).getBigUint64(0, true) : 0n) + 1n;
    const value = new Uint8Array(8);
    new DataView(value.buffer).setBigUint64(0, count, true);
    state.put(key, value);
    return [text(key) + `=${count}`];
  }
}

exportStage(Count);
"#;

const JS_COUNT_TEST: &str = r#"import assert from "node:assert/strict";
import { test } from "node:test";
import { Message } from "weir";
import { Harness } from "weir/testing";
import { Count } from "./stage.js";

test("counts per key", () => {
  const h = new Harness(Count);
  const out = h.handleBatch([new Message("a"), new Message("b"), new Message("a")]);
  assert.deepEqual(out.map((o) => o[0].text()), ["a=1", "b=1", "a=2"]);
});
"#;
