use connect_runtime::Element;

#[derive(Element)]
#[element(client)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
