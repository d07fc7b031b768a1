nice: ‘crocnet’: No such file or directory
