use connect_runtime::{Element, hooks};

// Every mistake is reported in one compile.
#[derive(Element)]
#[element(server = true, name = 5, colour = "blue")]
#[element]
struct Malformed;

#[derive(Element)]
#[element(name = "no-roles")]
struct NoRoles;

#[hooks]
impl Malformed {}

#[hooks]
impl NoRoles {}

fn main() {}
