fn main() -> std::process::ExitCode {
    llima_box::main()
}
