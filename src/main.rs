fn main() -> std::process::ExitCode {
    ocpipe::cli::main()
}
