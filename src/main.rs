fn main() -> std::process::ExitCode {
    ocpipe::memory::configure();
    ocpipe::cli::main()
}
