use super::*;

/// A small valid catalogue; each refusal test breaks one thing in it.
const GOOD: &str = r#"
service = "svc"

[[parameter]]
name = "a"
type = "int"
min = 1
max = 8
step = 1

[[parameter]]
name = "b"
type = "int"
min = 2
max = 16
log = true

[[parameter]]
name = "mode"
type = "enum"
values = ["x", "y"]

[[parameter]]
name = "t"
type = "float"
min = 0.5
max = 10.0
decimals = 1

[[constraint]]
left = "a"
op = "<="
right = "b"

[apply]
config = "a={{a}} b={{b}} listen={{listen}}"
env = { MODE = "{{mode}}" }
flags = ["--t={{t}}"]

[shadow]
start = "svc -c {{config}}"
health_path = "/health"
port = 8080

[limits]
primary_cpu_cores = 2.0
primary_memory_mb = 512
cpu_fraction = 0.5
memory_fraction = 0.25
"#;

fn refused(text: &str) -> String {
    match parse_catalogue(text) {
        Ok(_) => panic!("catalogue accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_catalogue_parses_with_grid_and_limits() {
    let c = parse_catalogue(GOOD).expect("valid");
    assert_eq!(c.parameters.len(), 4);
    assert!((c.limits.cpu_cores() - 1.0).abs() < 1e-12);
    assert_eq!(c.limits.memory_bytes(), 128 << 20);
    // a: 1, 4, 8; b: 2, 5, 16 (geometric middle): 6 pairs with a <= b; mode 2; t 3 levels.
    let grid = c.grid();
    assert!(grid.iter().all(|p| c.satisfies(p)));
    assert_eq!(grid.len(), 6 * 2 * 3);
    let mut p = grid[0].clone();
    p.insert("t".into(), ParamValue::Float(2.25));
    assert_eq!(c.rendered_values(&p)["t"], "2.2");
}

#[test]
fn shipped_nginx_catalogue_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sweep/nginx-proxy-cache.toml");
    let c = Catalogue::load(&path).expect("nginx catalogue");
    assert_eq!(c.service, "nginx-proxy-cache");
    assert!(c.grid().len() >= 32);
}

#[test]
fn unknown_type_is_refused_naming_the_field() {
    let e = refused(&GOOD.replace("type = \"enum\"", "type = \"set\""));
    assert!(e.contains("parameter[2].type") && e.contains("set"), "{e}");
}

#[test]
fn empty_ranges_are_refused() {
    let e = refused(&GOOD.replace("min = 0.5\nmax = 10.0", "min = 10.0\nmax = 0.5"));
    assert!(
        e.contains("parameter[3].max") && e.contains("empty range"),
        "{e}"
    );
    let e = refused(&GOOD.replace("values = [\"x\", \"y\"]", "values = []"));
    assert!(e.contains("parameter[2].values"), "{e}");
    let e = refused(&GOOD.replace("min = 1\nmax = 8", "min = 9\nmax = 8"));
    assert!(e.contains("parameter[0].max"), "{e}");
}

#[test]
fn unsatisfiable_constraint_is_refused() {
    let e = refused(&GOOD.replace("op = \"<=\"\nright = \"b\"", "op = \">\"\nright = 100"));
    assert!(
        e.contains("constraint") && e.contains("cannot all hold"),
        "{e}"
    );
}

#[test]
fn constraint_on_unknown_parameter_is_refused() {
    let e = refused(&GOOD.replace("right = \"b\"", "right = \"zz\""));
    assert!(e.contains("constraint[0].right") && e.contains("zz"), "{e}");
}

#[test]
fn placeholder_without_parameter_is_refused() {
    let e = refused(&GOOD.replace("--t={{t}}", "--t={{t}} --u={{u}}"));
    assert!(e.contains("apply.flags[0]") && e.contains("{{u}}"), "{e}");
}

#[test]
fn parameter_never_used_is_refused() {
    let e = refused(&GOOD.replace("env = { MODE = \"{{mode}}\" }", ""));
    assert!(e.contains("parameter.mode"), "{e}");
}

#[test]
fn missing_fields_are_named() {
    let e = refused(&GOOD.replace("port = 8080", ""));
    assert!(e.contains("shadow.port"), "{e}");
    let e = refused(&GOOD.replace("min = 2\nmax = 16", "min = 2"));
    assert!(
        e.contains("parameter[1].max") && e.contains("missing"),
        "{e}"
    );
    let e = refused(&GOOD.replace("service = \"svc\"", ""));
    assert!(e.contains("`service`"), "{e}");
}

#[test]
fn bad_limits_and_grid_levels_are_refused() {
    let e = refused(&GOOD.replace("cpu_fraction = 0.5", "cpu_fraction = 1.5"));
    assert!(e.contains("limits.cpu_fraction"), "{e}");
    let e = refused(&GOOD.replace("step = 1", "step = 1\ngrid = [1, 9]"));
    assert!(e.contains("parameter[0].grid"), "{e}");
    let e = refused(&GOOD.replace("log = true", "log = true\nstep = 0"));
    assert!(e.contains("parameter[1].step"), "{e}");
}

#[test]
fn unknown_fields_are_refused() {
    let e = refused(&GOOD.replace("port = 8080", "port = 8080\nprot = 1"));
    assert!(e.contains("prot"), "{e}");
}
