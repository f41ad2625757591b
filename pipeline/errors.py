class PipelineError(Exception):
    """An error the user can cause (config, data, files, network).

    The message names the file, row, column or key and the rule broken; the CLI
    prints it on one line and exits non-zero, without a traceback.
    """
