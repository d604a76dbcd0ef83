//! A route as the bridge runs it: endpoints parsed, filters compiled.

use super::*;

/// `ENSEMBLE:/path`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ensemble: String,
    pub path: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ensemble, self.path)
    }
}

/// A route with its endpoints parsed and its filters compiled, shared by the
/// capture task and every target worker of the route.
#[derive(Debug, Clone)]
pub struct Route {
    pub config: RouteConfig,
    pub source: Endpoint,
    pub targets: Vec<Endpoint>,
    pub filter: PathFilter,
}

impl Route {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Every member of the route: the configured source (its initial
    /// primary) and the targets (its initial mirrors).
    pub fn members(&self) -> impl Iterator<Item = &Endpoint> {
        std::iter::once(&self.source).chain(&self.targets)
    }

    pub fn member(&self, ensemble: &str) -> Option<&Endpoint> {
        self.members().find(|m| m.ensemble == ensemble)
    }

    /// The route as it runs while `primary` is its primary: that member is
    /// the source and every other member a target. Relative paths, and so
    /// the filters, are the same from every member; only whether the
    /// source holds `meta_path` is worked out again. `None` when `primary`
    /// is no member.
    pub fn oriented(&self, primary: &str, meta_path: &str) -> Option<Route> {
        // By position: a route may keep two members in one ensemble (at
        // different paths); only the first of them can be primary.
        let at = self.members().position(|m| m.ensemble == primary)?;
        let source = self.members().nth(at).expect("found above").clone();
        let targets = self
            .members()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .map(|(_, m)| m.clone())
            .collect();
        let mut filter = self.filter.clone();
        filter.meta = crate::path::relative(&source.path, meta_path)
            .filter(|_| crate::path::is_within(meta_path, &source.path))
            .map(str::to_string);
        Some(Route {
            config: self.config.clone(),
            source,
            targets,
            filter,
        })
    }
}

/// Include/exclude globs, evaluated on paths relative to the route's source
/// path (`""` is the route root, `"a/b"` a descendant).
#[derive(Debug, Clone)]
pub struct PathFilter {
    include: GlobSet,
    exclude: GlobSet,
    /// The globs as configured, to name the one that decided.
    include_globs: Vec<String>,
    exclude_globs: Vec<String>,
    /// `meta_path` relative to the source, when the source contains it:
    /// zkbridge's own znodes are never mirrored.
    pub(super) meta: Option<String>,
}

impl PathFilter {
    pub fn new(include: &[String], exclude: &[String], key: &str) -> Result<Self, ConfigError> {
        let build = |globs: &[String], which: &str| -> Result<GlobSet, ConfigError> {
            let mut set = GlobSetBuilder::new();
            for (i, glob) in globs.iter().enumerate() {
                let glob = globset::GlobBuilder::new(glob)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| {
                        ConfigError::invalid(format!("{key}.{which}[{i}]"), format!("invalid glob {glob:?}: {e}"))
                    })?;
                set.add(glob);
            }
            set.build()
                .map_err(|e| ConfigError::invalid(format!("{key}.{which}"), e.to_string()))
        };
        Ok(PathFilter {
            include: build(include, "include")?,
            exclude: build(exclude, "exclude")?,
            include_globs: include.to_vec(),
            exclude_globs: exclude.to_vec(),
            meta: None,
        })
    }

    /// Whether the route manages the node at `relative`: it matches an
    /// include glob and neither it nor an ancestor matches an exclude glob
    /// (excluding `tmp` excludes what lives under it). The route root is
    /// always managed: it is the anchor every other node hangs from.
    pub fn managed(&self, relative: &str) -> bool {
        relative.is_empty() || (self.include.is_match(relative) && !self.excluded(relative))
    }

    /// Why the route does not manage `relative`, in an operator's words
    /// (`None` when it does): which exclude glob matched it or an
    /// ancestor, that no include glob matches it, or that it is zkbridge's
    /// own.
    pub fn why_unmanaged(&self, relative: &str) -> Option<String> {
        if self.managed(relative) {
            return None;
        }
        if let Some(meta) = &self.meta {
            if is_within(relative, meta) {
                return Some("zkbridge's own znodes (meta_path) are never mirrored".to_string());
            }
        }
        for prefix in path::self_and_ancestors(relative).filter(|p| !p.is_empty()) {
            if let Some(i) = self.exclude.matches(prefix).first() {
                let glob = &self.exclude_globs[*i];
                return Some(match prefix == relative {
                    true => format!("matches exclude glob {glob:?}"),
                    false => format!("under {prefix:?}, which matches exclude glob {glob:?}"),
                });
            }
        }
        Some(format!("matches no include glob (include = {:?})", self.include_globs))
    }

    /// Whether `relative` or one of its ancestors is excluded; scans do not
    /// descend into such nodes.
    pub fn excluded(&self, relative: &str) -> bool {
        if relative.is_empty() {
            return false;
        }
        if let Some(meta) = &self.meta {
            if is_within(relative, meta) {
                return true;
            }
        }
        if self.exclude.is_empty() {
            return false;
        }
        path::self_and_ancestors(relative)
            .filter(|prefix| !prefix.is_empty())
            .any(|prefix| self.exclude.is_match(prefix))
    }
}
