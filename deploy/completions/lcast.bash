# bash completion for lcast: lcast itself lists the commands and flags that
# fit (urfave/cli's --generate-bash-completion); other words are files.
_lcast() {
	local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} words
	if [[ $prev == -c || $prev == --config || $prev == --file ]]; then
		COMPREPLY=($(compgen -f -- "$cur"))
		return
	fi
	if [[ $cur == -* ]]; then
		words=$("${COMP_WORDS[@]:0:COMP_CWORD}" - --generate-bash-completion 2>/dev/null)
	else
		words=$("${COMP_WORDS[@]:0:COMP_CWORD}" --generate-bash-completion 2>/dev/null | grep -vx 'help\|h')
	fi
	COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F _lcast lcast
