//! Which AWS operations each function's code can reach, found by reading
//! the source (no build, no run): a call graph over the library crates in
//! `shared/` and each
//! `functions/*/src/main.rs`, parsed with `syn`.
//!
//! The graph over-approximates, so that a missing grant cannot hide:
//! - a method call `.name(..)` may reach every method called `name` in the
//!   crate (that covers `dyn` ports: `app.vault.delete_secret(..)` reaches
//!   every adapter's `delete_secret`);
//! - a path call is resolved through the file's `use` items and module
//!   paths, and falls back to every function of that name;
//! - inside macro invocations every `name(..)` counts as both;
//! - a function named as a value (`map(Self::f)`) counts as called.
//!
//! Items nested in a body count as part of it. Test code (`#[cfg(test)]`
//! modules, `#[test]` functions) is left out: it is not deployed. An AWS operation is a method call on a field or
//! variable named `client` in a file that imports exactly one `aws_sdk_*`
//! crate; every `.send()` there must follow one, or the analysis refuses to
//! answer (an SDK call it cannot name would be a blind spot).

use proc_macro2::{TokenStream, TokenTree};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// One function, method or trait default method.
#[derive(Debug)]
struct FnDef {
    name: String,
    /// Module path, `["aws", "dynamo"]`.
    module: Vec<String>,
    /// The `impl` self type or trait (last path segment).
    owner: Option<String>,
    has_self: bool,
    /// Not `pub` and not a trait's: callable only from its module and the
    /// modules inside it (Rust's privacy rule, which narrows name matching).
    private: bool,
    calls: Vec<Call>,
    /// AWS actions called directly, `"dynamodb:PutItem"`.
    ops: Vec<String>,
    /// The file's `use` map: local name -> full path.
    uses: usize,
}

#[derive(Debug, Clone)]
enum Call {
    Path(Vec<String>),
    Method(String),
    /// A name seen as `name(` inside a macro: a path or a method.
    Either(String),
}

/// The crate's functions and what each calls.
pub struct Graph {
    fns: Vec<FnDef>,
    /// Names of the traits defined in the crate.
    traits: BTreeSet<String>,
    use_maps: Vec<HashMap<String, Vec<String>>>,
    roots: BTreeMap<String, usize>,
    /// The library crates' names (`domain`, `aws`, ...): absolute paths.
    crates: BTreeSet<String>,
}

/// Reachable AWS actions of a function binary, each with one call chain
/// that reaches it (for the failure message).
pub type Reach = BTreeMap<String, Vec<String>>;

impl Graph {
    /// Parses the workspace at `root`: each library crate under `shared/`
    /// (`shared/<dir>/src/**.rs` as the crate its `[lib] name` says; the
    /// test kit left out, as no function links it) and
    /// `functions/<dir>/src/main.rs` as the root of binary `<package name>`.
    pub fn load(root: &Path) -> Graph {
        let mut g = Graph {
            fns: Vec::new(),
            traits: BTreeSet::new(),
            use_maps: Vec::new(),
            roots: BTreeMap::new(),
            crates: library_crates(root).into_iter().map(|(n, _)| n).collect(),
        };
        for (name, src) in library_crates(root) {
            for file in rust_files(&src) {
                let rel = file.strip_prefix(&src).unwrap();
                let mut module = vec![name.clone()];
                for part in rel.with_extension("").iter() {
                    let part = part.to_string_lossy().to_string();
                    if part != "lib" && part != "mod" {
                        module.push(part);
                    }
                }
                g.add_file(&file, module);
            }
        }
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("functions"))
            .expect("functions/")
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        for dir in dirs {
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
            let binary = manifest
                .lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .and_then(|l| l.strip_suffix('"'))
                .unwrap_or_else(|| panic!("no package name in {}", dir.display()))
                .to_string();
            let module = vec![format!("bin_{}", binary.replace('-', "_"))];
            let before = g.fns.len();
            g.add_file(&dir.join("src/main.rs"), module);
            let main = (before..g.fns.len())
                .find(|&i| g.fns[i].name == "main")
                .unwrap_or_else(|| panic!("no fn main in {}", dir.display()));
            g.roots.insert(binary, main);
        }
        g
    }

    /// The function binaries found.
    pub fn binaries(&self) -> Vec<String> {
        self.roots.keys().cloned().collect()
    }

    /// Every AWS action binary `binary` can reach.
    pub fn reach(&self, binary: &str) -> Reach {
        let root = self.roots[binary];
        let mut parent: HashMap<usize, usize> = HashMap::new();
        let mut seen = BTreeSet::from([root]);
        let mut queue = VecDeque::from([root]);
        let mut out = Reach::new();
        while let Some(f) = queue.pop_front() {
            for op in &self.fns[f].ops {
                out.entry(op.clone())
                    .or_insert_with(|| self.chain(f, &parent));
            }
            for call in &self.fns[f].calls {
                for callee in self.resolve(f, call) {
                    if seen.insert(callee) {
                        parent.insert(callee, f);
                        queue.push_back(callee);
                    }
                }
            }
        }
        out
    }

    fn chain(&self, mut f: usize, parent: &HashMap<usize, usize>) -> Vec<String> {
        let mut chain = vec![self.label(f)];
        while let Some(&p) = parent.get(&f) {
            chain.push(self.label(p));
            f = p;
        }
        chain.reverse();
        chain
    }

    fn label(&self, f: usize) -> String {
        let d = &self.fns[f];
        match &d.owner {
            Some(o) => format!("{}::{o}::{}", d.module.join("::"), d.name),
            None => format!("{}::{}", d.module.join("::"), d.name),
        }
    }

    fn resolve(&self, from: usize, call: &Call) -> Vec<usize> {
        match call {
            Call::Method(name) => self.methods(from, name),
            Call::Path(segs) => self.resolve_path(from, segs),
            Call::Either(name) => {
                let mut v = self.methods(from, name);
                v.extend(self.resolve_path(from, std::slice::from_ref(name)));
                v
            }
        }
    }

    fn methods(&self, from: usize, name: &str) -> Vec<usize> {
        let module = &self.fns[from].module;
        self.matching(|d| d.has_self && d.name == name && visible(d, module))
    }

    fn matching(&self, pred: impl Fn(&FnDef) -> bool) -> Vec<usize> {
        (0..self.fns.len())
            .filter(|&i| pred(&self.fns[i]))
            .collect()
    }

    fn resolve_path(&self, from: usize, segs: &[String]) -> Vec<usize> {
        let here = &self.fns[from];
        let name = segs.last().unwrap();
        if segs.len() == 1 {
            if let Some(full) = self.use_maps[here.uses].get(name)
                && full.len() > 1
            {
                return self.resolve_path(from, full);
            }
            let local = self.matching(|d| d.name == *name && d.module == here.module);
            if !local.is_empty() {
                return local;
            }
            return self.matching(|d| d.name == *name && !d.has_self && visible(d, &here.module));
        }
        let qualifier = &segs[segs.len() - 2];
        if qualifier == "Self" {
            // The impl's own function, or a default method of a trait it implements.
            return self.matching(|d| {
                d.name == *name
                    && (d.owner == here.owner
                        || self.traits.contains(d.owner.as_deref().unwrap_or("")))
            });
        }
        if qualifier.starts_with(char::is_uppercase) {
            // `Type::f`, `Trait::f(x)`, `<T as Trait>::f`, a generic `S::f`,
            // a renamed or aliased type: every visible function of that name.
            return self.matching(|d| d.name == *name && visible(d, &here.module));
        }
        // A module path: make it absolute where the file says how.
        let mut module: Vec<String> = segs[..segs.len() - 1].to_vec();
        match module[0].as_str() {
            "crate" => module[0] = here.module[0].clone(),
            "self" => module
                .splice(0..1, here.module.iter().cloned())
                .for_each(drop),
            "super" => {
                let parent = here.module[..here.module.len() - 1].to_vec();
                module.splice(0..1, parent).for_each(drop);
            }
            first if self.crates.contains(first) => {}
            first => {
                if let Some(full) = self.use_maps[here.uses].get(first) {
                    let mut full = full.clone();
                    if full[0] == "crate" {
                        full[0] = here.module[0].clone();
                    }
                    module.splice(0..1, full).for_each(drop);
                }
            }
        }
        let exact = self.matching(|d| d.name == *name && d.module == module);
        if !exact.is_empty() {
            return exact;
        }
        // Relative to this module, or an item this analysis cannot place:
        // every function of that name in a module ending so.
        self.matching(|d| {
            d.name == *name
                && d.module.ends_with(&segs[..segs.len() - 1])
                && visible(d, &here.module)
        })
    }

    fn add_file(&mut self, path: &Path, module: Vec<String>) {
        let text = std::fs::read_to_string(path).unwrap();
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let service = sdk_service(&file);
        let uses = self.use_maps.len();
        self.use_maps.push(HashMap::new());
        let ctx = FileCtx {
            path,
            service: service.as_deref(),
            uses,
        };
        self.add_items(&ctx, &file.items, &module);
    }

    fn add_items(&mut self, ctx: &FileCtx, items: &[syn::Item], module: &[String]) {
        for item in items {
            match item {
                syn::Item::Use(u) => {
                    let mut prefix = Vec::new();
                    collect_use(&u.tree, &mut prefix, &mut self.use_maps[ctx.uses]);
                }
                syn::Item::Fn(f) if !is_test(&f.attrs) => {
                    let private = matches!(f.vis, syn::Visibility::Inherited);
                    self.add_fn(ctx, module, None, private, &f.sig, &f.block);
                }
                syn::Item::Impl(imp) if !is_test(&imp.attrs) => {
                    let owner = type_name(&imp.self_ty);
                    let inherent = imp.trait_.is_none();
                    for it in &imp.items {
                        if let syn::ImplItem::Fn(f) = it
                            && !is_test(&f.attrs)
                        {
                            let private = inherent && matches!(f.vis, syn::Visibility::Inherited);
                            self.add_fn(ctx, module, owner.clone(), private, &f.sig, &f.block);
                        }
                    }
                }
                syn::Item::Trait(t) => {
                    self.traits.insert(t.ident.to_string());
                    for it in &t.items {
                        if let syn::TraitItem::Fn(f) = it
                            && let Some(block) = &f.default
                        {
                            let owner = Some(t.ident.to_string());
                            self.add_fn(ctx, module, owner, false, &f.sig, block);
                        }
                    }
                }
                // A static's or const's initializer (a closure, a lazily
                // built value) runs when the item is named: a node of its own.
                syn::Item::Static(st) if !is_test(&st.attrs) => {
                    self.add_value(ctx, module, &st.ident, &st.expr);
                }
                syn::Item::Const(c) if !is_test(&c.attrs) => {
                    self.add_value(ctx, module, &c.ident, &c.expr);
                }
                syn::Item::Mod(m) if !is_test(&m.attrs) => {
                    if let Some((_, items)) = &m.content {
                        let mut inner = module.to_vec();
                        inner.push(m.ident.to_string());
                        self.add_items(ctx, items, &inner);
                    }
                }
                _ => {}
            }
        }
    }

    fn add_value(
        &mut self,
        ctx: &FileCtx,
        module: &[String],
        ident: &syn::Ident,
        expr: &syn::Expr,
    ) {
        let sig: syn::Signature = syn::parse_quote!(fn #ident());
        let block: syn::Block = syn::parse_quote!({ #expr });
        self.add_fn(ctx, module, None, false, &sig, &block);
    }

    fn add_fn(
        &mut self,
        ctx: &FileCtx,
        module: &[String],
        owner: Option<String>,
        private: bool,
        sig: &syn::Signature,
        block: &syn::Block,
    ) {
        let mut v = Calls::default();
        for input in &sig.inputs {
            v.visit_fn_arg(input);
        }
        v.visit_block(block);
        let locals = std::mem::take(&mut v.locals);
        v.calls.retain(|c| match c {
            Call::Path(segs) => !(segs.len() == 1 && locals.contains(&segs[0])),
            Call::Either(name) => !locals.contains(name),
            Call::Method(_) => true,
        });
        let ops: Vec<String> = v
            .client_calls
            .iter()
            .map(|op| match ctx.service {
                Some(s) => format!("{s}:{}", pascal(op)),
                None => panic!(
                    "{}: fn {}: `client.{op}()` in a file that imports no single aws_sdk_* crate",
                    ctx.path.display(),
                    sig.ident
                ),
            })
            .collect();
        if ctx.service.is_some() && v.sends > 0 && ops.is_empty() {
            panic!(
                "{}: fn {} calls .send() on an SDK request this analysis cannot name \
                 (build requests from a field or variable named `client`)",
                ctx.path.display(),
                sig.ident
            );
        }
        self.fns.push(FnDef {
            name: sig.ident.to_string(),
            module: module.to_vec(),
            owner,
            has_self: sig.receiver().is_some(),
            private,
            calls: v.calls,
            ops,
            uses: ctx.uses,
        });
    }
}

struct FileCtx<'a> {
    path: &'a Path,
    service: Option<&'a str>,
    uses: usize,
}

#[derive(Default)]
struct Calls {
    calls: Vec<Call>,
    /// Names bound in the body (variables, closures, parameters): a call
    /// `name(..)` of one of these is a closure or a value, not an item.
    locals: BTreeSet<String>,
    client_calls: Vec<String>,
    sends: usize,
}

impl<'ast> Visit<'ast> for Calls {
    fn visit_pat_ident(&mut self, p: &'ast syn::PatIdent) {
        self.locals.insert(p.ident.to_string());
        syn::visit::visit_pat_ident(self, p);
    }

    fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
        let segs: Vec<String> = p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        self.calls.push(Call::Path(segs));
        syn::visit::visit_expr_path(self, p);
    }

    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        let name = m.method.to_string();
        if name == "send" && m.args.is_empty() {
            self.sends += 1;
        }
        if names_client(&m.receiver) {
            self.client_calls.push(name.clone());
        }
        self.calls.push(Call::Method(name));
        syn::visit::visit_expr_method_call(self, m);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
    }
}

impl Calls {
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, t) in trees.iter().enumerate() {
            match t {
                TokenTree::Ident(id) => {
                    if let Some(TokenTree::Group(g)) = trees.get(i + 1)
                        && g.delimiter() == proc_macro2::Delimiter::Parenthesis
                    {
                        let after_dot = matches!(
                            i.checked_sub(1).and_then(|j| trees.get(j)),
                            Some(TokenTree::Punct(p)) if p.as_char() == '.'
                        );
                        let name = id.to_string();
                        if after_dot {
                            self.calls.push(Call::Method(name));
                        } else {
                            self.calls.push(Call::Either(name));
                        }
                    }
                }
                TokenTree::Group(g) => self.tokens(g.stream()),
                _ => {}
            }
        }
    }
}

/// Whether code in `module` may call `d` (private items only from their
/// own module and the modules inside it).
fn visible(d: &FnDef, module: &[String]) -> bool {
    !d.private || module.starts_with(&d.module)
}

fn names_client(e: &syn::Expr) -> bool {
    match e {
        syn::Expr::Field(f) => matches!(&f.member, syn::Member::Named(n) if n == "client"),
        syn::Expr::Path(p) => p.path.is_ident("client"),
        syn::Expr::Reference(r) => names_client(&r.expr),
        syn::Expr::Paren(p) => names_client(&p.expr),
        _ => false,
    }
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().segments.last().is_some_and(|s| s.ident == "test")
            || (a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
    })
}

fn type_name(ty: &syn::Type) -> Option<String> {
    match ty {
        syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn collect_use(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    out: &mut HashMap<String, Vec<String>>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            collect_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut full = prefix.clone();
            full.push(n.ident.to_string());
            out.insert(n.ident.to_string(), full);
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.clone();
            full.push(r.ident.to_string());
            out.insert(r.rename.to_string(), full);
        }
        syn::UseTree::Group(g) => {
            for t in &g.items {
                collect_use(t, prefix, out);
            }
        }
        syn::UseTree::Glob(_) => {}
    }
}

/// The IAM service prefix of the one `aws_sdk_*` crate a file imports.
fn sdk_service(file: &syn::File) -> Option<String> {
    let mut crates = BTreeSet::new();
    for item in &file.items {
        if let syn::Item::Use(u) = item
            && let syn::UseTree::Path(p) = &u.tree
            && let Some(service) = p.ident.to_string().strip_prefix("aws_sdk_")
        {
            crates.insert(service.to_string());
        }
    }
    (crates.len() == 1).then(|| crates.pop_first().unwrap())
}

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// `(lib name, src dir)` of each library crate under `shared/` that a
/// function may link (the test kit is a dev-dependency only).
fn library_crates(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("shared"))
        .expect("shared/")
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    for dir in dirs {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let lib = manifest
            .split("[lib]")
            .nth(1)
            .and_then(|l| l.lines().find_map(|l| l.strip_prefix("name = \"")))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no [lib] name in {}", dir.display()))
            .to_string();
        if lib != "testkit" {
            out.push((lib, dir.join("src")));
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reach-{}", crate::unique_suffix()));
        for (path, text) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    const ADAPTER: &str = r#"
        use aws_sdk_secretsmanager::Client;
        pub struct Vault { client: Client }
        impl Port for Vault {
            async fn remove(&self, n: &str) { self.client.delete_secret().secret_id(n).send().await; }
            async fn fetch(&self, n: &str) { self.read(n).await; }
        }
        impl Vault {
            async fn read(&self, n: &str) { self.client.get_secret_value().secret_id(n).send().await; }
        }
    "#;

    #[test]
    fn a_call_through_a_dyn_port_in_a_macro_reaches_the_adapters_operation() {
        let root = workspace(&[
            ("shared/core/Cargo.toml", "[lib]\nname = \"core\"\n"),
            ("shared/core/src/lib.rs", "pub mod vault;\npub mod handler;"),
            ("shared/core/src/vault.rs", ADAPTER),
            (
                "shared/core/src/handler.rs",
                "pub async fn handle(app: &App) { tokio::join!(app.vault.remove(\"x\")); }",
            ),
            ("functions/f/Cargo.toml", "[package]\nname = \"f\"\n"),
            (
                "functions/f/src/main.rs",
                "fn main() { let run = |a| core::handler::handle(a); run(1); }",
            ),
        ]);
        let reach = Graph::load(&root).reach("f");
        assert_eq!(
            reach.keys().collect::<Vec<_>>(),
            ["secretsmanager:DeleteSecret"],
            "{reach:?}"
        );
    }

    #[test]
    fn a_trait_qualified_call_and_a_static_initializer_reach_the_adapter() {
        let root = workspace(&[
            ("shared/core/Cargo.toml", "[lib]\nname = \"core\"\n"),
            ("shared/core/src/lib.rs", "pub mod vault;\npub mod handler;"),
            ("shared/core/src/vault.rs", ADAPTER),
            (
                "shared/core/src/handler.rs",
                "static RUN: fn() = || { Port::remove(&V, \"x\"); };\npub fn handle() { RUN(); }",
            ),
            ("functions/f/Cargo.toml", "[package]\nname = \"f\"\n"),
            (
                "functions/f/src/main.rs",
                "fn main() { core::handler::handle(); }",
            ),
        ]);
        let reach = Graph::load(&root).reach("f");
        assert!(
            reach.contains_key("secretsmanager:DeleteSecret"),
            "{reach:?}"
        );
    }

    #[test]
    fn a_private_method_is_not_reached_by_a_same_named_call_elsewhere() {
        let root = workspace(&[
            ("shared/core/Cargo.toml", "[lib]\nname = \"core\"\n"),
            ("shared/core/src/lib.rs", "pub mod vault;\npub mod cache;"),
            ("shared/core/src/vault.rs", ADAPTER),
            (
                "shared/core/src/cache.rs",
                "pub fn key(l: &Lock) { l.read(); }",
            ),
            ("functions/f/Cargo.toml", "[package]\nname = \"f\"\n"),
            (
                "functions/f/src/main.rs",
                "fn main() { core::cache::key(&l); }",
            ),
        ]);
        assert!(Graph::load(&root).reach("f").is_empty());
    }

    #[test]
    fn sdk_operation_names_become_iam_actions() {
        assert_eq!(pascal("get_secret_value"), "GetSecretValue");
        assert_eq!(pascal("query"), "Query");
    }
}
