use connect_runtime::hooks;

struct Plain;

#[hooks]
impl Clone for Plain {
    fn clone(&self) -> Self {
        Plain
    }
}

fn main() {}
